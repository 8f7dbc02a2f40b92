"""Tip-Adapter's official alpha/beta grid search on validation features, vectorised.

Grid: beta_i = i * (S_beta - 0.1) / n_beta + 0.1, alpha_j = j * (S_alpha - 0.1) / n_alpha + 0.1,
beta in the outer loop, alpha inner, keeping the first maximum (strict >) of top-1 accuracy.
Per block of validation rows the similarities and text logits are computed once. A cell's
prediction is right when no class beats the true class (ties to the lowest index), so only
the classes that can come near it anywhere on the grid are scored (`_contenders`, a bound
from the grid's corners): for each beta their cache terms are the same float32 segment sums
of the same exp terms as exact mode, and all alphas are scored at once in the official order
`clip + cache * alpha`. The per-cell accuracies are therefore exactly the dense ones, and
correct counts add up over blocks, so the first maximum is the official one. Features that are
not unit-length (|x . k| > 1) take the dense path, which scores every class.
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
SIM_SLACK = 1e-6  # similarities of unit vectors exceed 1 by rounding only


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
    scale: tuple[float, float] = (7.0, 3.0)

    def to_json(self) -> dict:
        """A JSON-serialisable dict of the result and the grid."""
        return {"alpha": self.alpha, "beta": self.beta, "val_acc": self.val_acc,
                "n_val": self.n_val, "betas": self.betas, "alphas": self.alphas,
                "grid": self.grid.tolist(), "scale": list(self.scale)}

    @classmethod
    def from_json(cls, obj: dict) -> TuneResult:
        """Inverse of `to_json`."""
        return cls(obj["alpha"], obj["beta"], obj["val_acc"], obj["n_val"], obj["betas"],
                   obj["alphas"], np.asarray(obj["grid"], dtype=np.float64),
                   tuple(obj.get("scale", (7.0, 3.0))))

    def edge_warnings(self) -> list[str]:
        """One line per chosen value on the edge of its grid, saying how to widen the grid."""
        lines = []
        for i, (name, values, value) in enumerate((("beta", self.betas, self.beta),
                                                   ("alpha", self.alphas, self.alpha))):
            if len(values) < 2:
                continue
            if value == values[-1]:
                wider = list(self.scale)
                wider[i] *= 2
                lines.append(f"{name} {value:.4g} is the top of its grid: the best may lie "
                             f"above it; widen the {name} scale, e.g. `scale=` "
                             f"{wider[0]:g} {wider[1]:g}")
            elif value == values[0]:
                lines.append(f"{name} {value:.4g} is the bottom of its grid: the best may lie "
                             f"below it, which the official grid (it starts at 0.1; `scale=` "
                             f"moves only its top) cannot search")
        return lines

    def save_json(self, path: Path | str) -> None:
        """Write `to_json()` atomically."""
        write_json(path, self.to_json())

    def save_heatmap(self, path: Path | str) -> None:
        """Write a PNG heat map of val accuracy over (beta, alpha), the choice marked."""
        import matplotlib  # start-up time: only the heat map needs it

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt  # start-up time (after the backend is set)

        fig, ax = plt.subplots(figsize=(10, 4))
        pad = [0.5 if v[-1] == v[0] else 0.0 for v in (self.betas, self.alphas)]  # one value
        extent = (self.betas[0] - pad[0], self.betas[-1] + pad[0], self.alphas[0] - pad[1],
                  self.alphas[-1] + pad[1])
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
           text: np.ndarray | None, *, num_classes: int | None = None,
           weighting: str = "balanced", scale: tuple[float, float] = (7.0, 3.0),
           steps: tuple[int, int] = (200, 20), block_bytes: int = BLOCK_BYTES,
           show_progress: bool = True) -> TuneResult:
    """Official grid search of Tip-Adapter's alpha, beta on (val_x, val_y) with text (C, D).

    Without text (`num_classes` then required) the logits are alpha * A(x), whose argmax does
    not depend on alpha: only beta is searched and alpha is 1.
    """
    val_x = np.ascontiguousarray(val_x, dtype=np.float32)
    val_y = np.asarray(val_y).reshape(-1).astype(np.int64)
    if val_x.ndim != 2 or val_x.shape[0] != val_y.shape[0] or val_x.shape[0] == 0:
        raise BadInput(f"validation features {val_x.shape} and labels {val_y.shape} do not "
                       "match: give one label per validation row (at least one)")
    if text is not None:
        text = np.ascontiguousarray(text, dtype=np.float32)
        num_classes = text.shape[0]
    elif num_classes is None:
        raise BadInput("a search without text classifier needs num_classes")
    sk = affinity.SortedKeys.build(keys, labels, num_classes, weighting)
    betas, alphas = grid_values(scale, steps)
    if text is None:
        alphas = [1.0]
    correct = np.zeros((len(betas), len(alphas)), dtype=np.int64)
    rows = max(1, block_bytes // (4 * max(len(sk.keys), len(alphas) * num_classes)))
    bar = progress(len(betas) * -(-len(val_x) // rows), "tune", unit="betas",
                   disable=not show_progress)
    with bar:
        for r0 in range(0, len(val_x), rows):
            x, y = val_x[r0:r0 + rows], val_y[r0:r0 + rows]
            sims = affinity.similarities(x, sk)
            clip = (np.zeros((len(x), num_classes), np.float32) if text is None else
                    (torch.mm(torch.from_numpy(x), torch.from_numpy(text).t()) * 100.0).numpy())
            if np.all(np.abs(sims) <= 1 + SIM_SLACK):
                correct += _pruned_block(sims, clip, y, sk, betas, alphas, bar)
            else:
                correct += _dense_block(sims, clip, y, sk, betas, alphas, bar)
    best = int(np.argmax(correct.ravel()))
    bi, ai = divmod(best, len(alphas))
    n = len(val_y)
    return TuneResult(alphas[ai], betas[bi], float(100.0 * correct[bi, ai] / n), n, betas, alphas,
                      100.0 * correct / n, (float(scale[0]), float(scale[1])))


def _dense_block(sims: np.ndarray, clip: np.ndarray, y: np.ndarray, sk: affinity.SortedKeys,
                 betas: list[float], alphas: list[float], bar) -> np.ndarray:
    """Correct counts (betas, alphas) of a row block, every class of every cell scored."""
    alpha_t = torch.tensor(alphas, dtype=torch.float32)[:, None, None]
    clip_t, y_t = torch.from_numpy(clip), torch.from_numpy(y)
    scores = torch.empty(len(alphas), *clip.shape)
    correct = np.zeros((len(betas), len(alphas)), dtype=np.int64)
    for i, beta in enumerate(betas):
        cache = torch.from_numpy(affinity.exact(None, sk, beta, sims=sims))
        torch.mul(cache[None], alpha_t, out=scores)
        pred = scores.add_(clip_t[None]).argmax(dim=2)  # official order: clip + A * alpha
        correct[i] = (pred == y_t[None]).sum(dim=1).numpy()
        bar.update(1)
    return correct


def _contenders(sims: np.ndarray, clip: np.ndarray, y: np.ndarray, sk: affinity.SortedKeys,
                betas: list[float], alphas: list[float]) -> np.ndarray:
    """(B, C) bool: classes that may score at least the true class's score in some cell.

    With |sims| <= 1 every key's term exp(-beta (1 - s)) is monotone in beta, so A(x)_c lies
    between its values at the smallest and largest beta; the scores are linear in alpha, so
    a class that stays below the true class by a margin at both alpha ends (bounds taken
    against it) stays below in every cell. The margin (1e-3 of the score scale) is far above
    float32 rounding, so the cells' float32 scores of the other classes never matter.
    """
    ends = [affinity.exact(None, sk, b, sims=sims) for b in (min(betas), max(betas))]
    hi, lo = np.maximum(*ends).astype(np.float64), np.minimum(*ends).astype(np.float64)
    rows = np.arange(len(y))
    clip64 = clip.astype(np.float64)
    span = max(abs(a) for a in alphas)
    tol = 1e-3 * (np.abs(clip64).max(axis=1) + span * hi.max(axis=1)) + 1e-6
    keep = np.zeros(clip.shape, dtype=bool)
    for a in (min(alphas), max(alphas)):
        upper = clip64 + np.maximum(a * hi, a * lo)
        floor = clip64[rows, y] + np.minimum(a * hi[rows, y], a * lo[rows, y])
        keep |= upper >= (floor - tol)[:, None]
    keep[rows, y] = False
    return keep


def _pruned_block(sims: np.ndarray, clip: np.ndarray, y: np.ndarray, sk: affinity.SortedKeys,
                  betas: list[float], alphas: list[float], bar) -> np.ndarray:
    """Correct counts (betas, alphas) of a row block, scoring only the contending classes.

    Each cell's scores are the same float32 numbers as `_dense_block`'s (same similarities,
    same exp, the same segment sums of the same keys, clip + A * alpha), and the argmax rule
    (ties to the lowest index) is applied to the true class against its contenders.
    """
    keep = _contenders(sims, clip, y, sk, betas, alphas)
    r, c = np.nonzero(keep)                       # row-major: pairs grouped by row
    r = np.concatenate([r, np.arange(len(y))])    # then each row's true class
    c = np.concatenate([c, y])
    counts = sk.counts[c]
    full = counts > 0                             # classes without keys: A = 0
    starts = np.concatenate([[0], np.cumsum(counts[full])[:-1]])
    within = np.arange(int(counts.sum())) - np.repeat(starts, counts[full])
    gather = np.repeat(r[full] * sims.shape[1] + sk.offsets[c[full]], counts[full]) + within
    flat = sims.reshape(-1)[gather]
    terms = np.empty_like(flat)
    weights = sk.weights[c[full]]
    alpha = np.asarray(alphas, dtype=np.float32)[None, :]
    n_other = len(c) - len(y)
    owner = r[:n_other]
    firsts = np.r_[0, np.flatnonzero(np.diff(owner)) + 1] if n_other else np.zeros(0, np.int64)
    lower = (c[:n_other] < y[owner])[:, None]
    base = clip[r, c][:, None]
    cache = np.zeros(len(c), dtype=np.float32)
    scores = np.empty((len(c), len(alphas)), dtype=np.float32)
    mine = np.empty((n_other, len(alphas)), dtype=np.float32)
    beaten = np.empty((n_other, len(alphas)), dtype=bool)
    ties = np.empty_like(beaten)
    correct = np.zeros((len(betas), len(alphas)), dtype=np.int64)
    for i, beta in enumerate(betas):
        affinity.exp_affinity_(terms, beta, src=flat)
        if len(starts):
            cache[full] = np.add.reduceat(terms, starts)
            if not sk.uniform:
                cache[full] *= weights
        np.multiply(cache[:, None], alpha, out=scores)
        scores += base                            # official order: clip + A * alpha
        other = scores[:n_other]
        np.take(scores[n_other:], owner, axis=0, out=mine)
        np.greater(other, mine, out=beaten)
        np.equal(other, mine, out=ties)
        ties &= lower
        beaten |= ties
        lost = np.logical_or.reduceat(beaten, firsts, axis=0).sum(axis=0) if n_other else 0
        correct[i] = len(y) - lost
        bar.update(1)
    return correct
