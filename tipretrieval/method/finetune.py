"""Tip-Adapter-F: fine-tune the cache keys as a bias-free linear layer, then re-search alpha/beta.

Values (labels), the class weights (`affinity.class_weights`) and the text classifier stay
fixed. AdamW (lr 1e-3, eps 1e-4), cosine
annealing over all steps, cross-entropy on `100 x W^T + alpha * A(x)` at the initial alpha and
beta. Each epoch draws one stored augmented view per training image (no CLIP forward pass).
The epoch kept is the best on the validation features (strict >), never on test; then the
official grid search runs with the fine-tuned keys.

The keys are laid out class by class in a (C, n_max) grid of slots (empty slots are zero rows,
masked out and never updated), so the per-class sum is a reshape-and-sum: differentiable,
deterministic on CPU and GPU, and without an M x C one-hot. Randomness (view draws, batch
order) comes from one seeded CPU `torch.Generator`, so a seed gives the same keys every run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BadInput
from ..util.progress import progress
from . import affinity, tune

EVAL_ROWS = 4096


@dataclass
class FinetuneResult:
    """Fine-tuned keys (input order), per-epoch curves, the best epoch, and the re-search."""

    keys: np.ndarray = field(repr=False)  # (M, D) float32, same order as the input keys
    train_loss: list[float]               # mean training cross-entropy per epoch
    val_acc: list[float]                  # val top-1 % per epoch at the initial alpha, beta
    best_epoch: int                       # 0-based epoch whose keys are kept
    tuned: tune.TuneResult                # alpha/beta search with the fine-tuned keys

    def to_json(self) -> dict:
        """The curves and choices as a JSON-serialisable dict (no keys, no grid)."""
        return {"train_loss": self.train_loss, "val_acc": self.val_acc,
                "best_epoch": self.best_epoch, "alpha": self.tuned.alpha,
                "beta": self.tuned.beta, "tuned_val_acc": self.tuned.val_acc}


class _SlotKeys(torch.nn.Module):
    """Keys as a bias-free linear layer over a (C, n_max) slot grid; A(x) by reshape-sum."""

    def __init__(self, sk: affinity.SortedKeys):
        super().__init__()
        counts = sk.counts
        self.shape = (sk.num_classes, max(1, int(counts.max(initial=0))))
        within = np.arange(len(sk.labels)) - sk.offsets[sk.labels]
        slots = torch.from_numpy(sk.labels * self.shape[1] + within)
        weight = torch.zeros(self.shape[0] * self.shape[1], sk.keys.shape[1])
        weight[slots] = torch.from_numpy(sk.keys)
        mask = torch.zeros(weight.shape[0])
        mask[slots] = 1.0
        self.linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.linear.weight = torch.nn.Parameter(weight)
        self.register_buffer("slots", slots)
        self.register_buffer("mask", mask)
        self.register_buffer("weights", torch.from_numpy(sk.weights))

    def forward(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        """A(x) (B, C) in the official order exp(-(beta - beta * affinity)), class-weighted."""
        terms = ((-1) * (beta - beta * self.linear(x))).exp() * self.mask
        return terms.view(x.shape[0], *self.shape).sum(dim=2) * self.weights

    def keys(self) -> np.ndarray:
        """The current keys in sorted order, (M, D) float32 on the CPU."""
        return self.linear.weight.detach()[self.slots].cpu().numpy()


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic torch kernels for the duration (restores the previous setting)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _accuracy(model: _SlotKeys, x: torch.Tensor, clip: torch.Tensor, y: torch.Tensor,
              alpha: float, beta: float) -> float:
    """Val top-1 % of the combined logits, in blocks of EVAL_ROWS rows."""
    correct = 0
    with torch.no_grad():
        for r0 in range(0, len(x), EVAL_ROWS):
            logits = clip[r0:r0 + EVAL_ROWS] + model(x[r0:r0 + EVAL_ROWS], beta) * alpha
            correct += int((logits.argmax(dim=1) == y[r0:r0 + EVAL_ROWS]).sum())
    return 100.0 * correct / len(x)


def _check(train_views: np.ndarray, train_labels: np.ndarray, dim: int, c: int) -> None:
    if train_views.ndim != 3 or train_views.shape[2] != dim or train_views.shape[1] < 1:
        raise BadInput(f"training views have shape {train_views.shape}, expected (N, V, {dim}):"
                       " store augmented views, or pass the features as one view each")
    if train_labels.shape != (train_views.shape[0],) or len(train_labels) == 0:
        raise BadInput(f"{train_labels.shape[0]} training labels for {train_views.shape[0]} "
                       "images: give one label per training image (at least one)")
    if train_labels.min() < 0 or train_labels.max() >= c:
        raise BadInput(f"training labels must lie in [0, {c}): label the training rows")


def finetune(keys: np.ndarray, labels: np.ndarray, text: np.ndarray, train_views: np.ndarray,
             train_labels: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, alpha: float,
             beta: float, *, epochs: int = 20, batch_size: int = 256, lr: float = 1e-3,
             eps: float = 1e-4, seed: int = 0, device: str | None = None,
             scale: tuple[float, float] = (7.0, 3.0), steps: tuple[int, int] = (200, 20),
             weighting: str = "balanced", show_progress: bool = True) -> FinetuneResult:
    """Tip-Adapter-F on keys (M, D) with labels (M,), text (C, D), views (N, V, D)."""
    text = np.ascontiguousarray(text, dtype=np.float32)
    sk = affinity.SortedKeys.build(keys, labels, text.shape[0], weighting)
    views = np.asarray(train_views, dtype=np.float32)
    targets = np.asarray(train_labels).reshape(-1).astype(np.int64)
    _check(views, targets, text.shape[1], text.shape[0])
    if epochs < 1 or batch_size < 1:
        raise BadInput(f"epochs {epochs} and batch size {batch_size} must be positive")
    auto = device in (None, "auto")  # auto: CUDA when available, as everywhere
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if auto else device)
    gen = torch.Generator().manual_seed(seed)
    with _deterministic():
        model = _SlotKeys(sk).to(dev)
        w = torch.from_numpy(text).to(dev)
        views_t = F.normalize(torch.from_numpy(views), dim=-1)
        y_t = torch.from_numpy(targets)
        vx = torch.from_numpy(np.ascontiguousarray(val_x, dtype=np.float32)).to(dev)
        vy = torch.from_numpy(np.asarray(val_y).reshape(-1).astype(np.int64)).to(dev)
        val_clip = 100.0 * vx @ w.t()
        n, per_epoch = len(views_t), -(-len(views_t) // batch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, eps=eps)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
        losses, accs, best, best_keys = [], [], -1.0, sk.keys
        bar = progress(epochs * per_epoch, "finetune", unit="steps", disable=not show_progress)
        with bar:
            for _ in range(epochs):
                pick = torch.randint(views_t.shape[1], (n,), generator=gen)
                order = torch.randperm(n, generator=gen)
                total = 0.0
                for b0 in range(0, n, batch_size):
                    idx = order[b0:b0 + batch_size]
                    x = views_t[idx, pick[idx]].to(dev)
                    logits = 100.0 * x @ w.t() + model(x, beta) * alpha
                    loss = F.cross_entropy(logits, y_t[idx].to(dev))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += loss.detach().item() * len(idx)
                    bar.update(1)
                losses.append(total / n)
                accs.append(_accuracy(model, vx, val_clip, vy, alpha, beta))
                if accs[-1] > best:
                    best, best_keys = accs[-1], model.keys()
    tuned = tune.search(val_x, val_y, best_keys, sk.labels, text, weighting=weighting,
                        scale=scale, steps=steps, show_progress=show_progress)
    out = np.empty_like(best_keys)
    out[sk.order] = best_keys
    return FinetuneResult(out, losses, accs, int(np.argmax(accs)), tuned)
