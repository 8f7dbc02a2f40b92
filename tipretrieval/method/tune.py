"""Tip-Adapter's official alpha/beta grid search on validation features, vectorised.

Grid: beta_i = i * (S_beta - 0.1) / n_beta + 0.1, alpha_j = j * (S_alpha - 0.1) / n_alpha + 0.1,
beta in the outer loop, alpha inner, keeping the first maximum (strict >) of top-1 accuracy.
Per block of validation rows the similarities are computed once, each beta's cache term once,
and all alphas of a beta are scored in one pass, in the official float32 order
`clip + cache * alpha`; correct counts add up over blocks, so the result is the official one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInput
from ..util.atomic import atomic_path, write_json
from ..util.progress import progress
from . import affinity

BLOCK_BYTES = 128 << 20


@dataclass
class TuneResult:
    """The chosen alpha and beta, their validation accuracy (%), and the full grid."""

    alpha: float
    beta: float
    val_acc: float
    n_val: int
    betas: list[float] = field(repr=False)
    alphas: list[float] = field(repr=False)
    grid: np.ndarray = field(repr=False)  # (len(betas), len(alphas)) val accuracy %

    def to_json(self) -> dict:
        """A JSON-serialisable dict of the result and the grid."""
        return {"alpha": self.alpha, "beta": self.beta, "val_acc": self.val_acc,
                "n_val": self.n_val, "betas": self.betas, "alphas": self.alphas,
                "grid": self.grid.tolist()}

    @classmethod
    def from_json(cls, obj: dict) -> TuneResult:
        """Inverse of `to_json`."""
        return cls(obj["alpha"], obj["beta"], obj["val_acc"], obj["n_val"], obj["betas"],
                   obj["alphas"], np.asarray(obj["grid"], dtype=np.float64))

    def save_json(self, path: Path | str) -> None:
        """Write `to_json()` atomically."""
        write_json(path, self.to_json())

    def save_heatmap(self, path: Path | str) -> None:
        """Write a PNG heat map of val accuracy over (beta, alpha), the choice marked."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 4))
        extent = (self.betas[0], self.betas[-1], self.alphas[0], self.alphas[-1])
        img = ax.imshow(self.grid.T, origin="lower", aspect="auto", extent=extent,
                        cmap="viridis", interpolation="nearest")
        ax.plot([self.beta], [self.alpha], "r+", markersize=14, mew=2)
        ax.set_xlabel("beta")
        ax.set_ylabel("alpha")
        ax.set_title(f"val top-1 %: best {self.val_acc:.2f} at alpha {self.alpha:.4g}, "
                     f"beta {self.beta:.4g}")
        fig.colorbar(img, ax=ax)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)


def grid_values(scale: tuple[float, float] = (7.0, 3.0),
                steps: tuple[int, int] = (200, 20)) -> tuple[list[float], list[float]]:
    """The official (betas, alphas) lists, computed in double exactly as the official code."""
    (s_beta, s_alpha), (n_beta, n_alpha) = scale, steps
    if n_beta < 1 or n_alpha < 1:
        raise BadInput(f"grid steps {steps} must be positive", "e.g. `steps=` 200 20")
    betas = [i * (s_beta - 0.1) / n_beta + 0.1 for i in range(n_beta)]
    alphas = [j * (s_alpha - 0.1) / n_alpha + 0.1 for j in range(n_alpha)]
    return betas, alphas


def search(val_x: np.ndarray, val_y: np.ndarray, keys: np.ndarray, labels: np.ndarray,
           text: np.ndarray, *, scale: tuple[float, float] = (7.0, 3.0),
           steps: tuple[int, int] = (200, 20), block_bytes: int = BLOCK_BYTES,
           show_progress: bool = True) -> TuneResult:
    """Official grid search of Tip-Adapter's alpha, beta on (val_x, val_y) with text (C, D)."""
    text = np.ascontiguousarray(text, dtype=np.float32)
    val_x = np.ascontiguousarray(val_x, dtype=np.float32)
    val_y = np.asarray(val_y).reshape(-1).astype(np.int64)
    if val_x.ndim != 2 or val_x.shape[0] != val_y.shape[0] or val_x.shape[0] == 0:
        raise BadInput(f"validation features {val_x.shape} and labels {val_y.shape} do not "
                       "match: give one label per validation row (at least one row)")
    sk = affinity.SortedKeys.build(keys, labels, text.shape[0])
    betas, alphas = grid_values(scale, steps)
    correct = np.zeros((len(betas), len(alphas)), dtype=np.int64)
    alpha_t = torch.tensor(alphas, dtype=torch.float32)[:, None, None]
    width = max(len(sk.keys), len(alphas) * text.shape[0])
    rows = max(1, block_bytes // (4 * width))
    bar = progress(len(betas) * -(-len(val_x) // rows), "tune", unit="betas",
                   disable=not show_progress)
    with bar:
        for r0 in range(0, len(val_x), rows):
            x, y = val_x[r0:r0 + rows], torch.from_numpy(val_y[r0:r0 + rows])
            sims = affinity.similarities(x, sk)
            clip = torch.mm(torch.from_numpy(x), torch.from_numpy(text).t()) * 100.0
            scores = torch.empty(len(alphas), *clip.shape)
            for i, beta in enumerate(betas):
                cache = torch.from_numpy(affinity.exact(None, sk, beta, sims=sims))
                torch.mul(cache[None], alpha_t, out=scores)
                pred = scores.add_(clip[None]).argmax(dim=2)  # official order: clip + A * alpha
                correct[i] += (pred == y[None]).sum(dim=1).numpy()
                bar.update(1)
    best = int(np.argmax(correct.ravel()))
    bi, ai = divmod(best, len(alphas))
    n = len(val_y)
    return TuneResult(alphas[ai], betas[bi], float(100.0 * correct[bi, ai] / n), n, betas, alphas,
                      100.0 * correct / n)
