"""Reproduce the reference figures of the real CLIP ViT-B/32 features with tipretrieval's math.

    .venv/bin/python tools/reproduce.py --data ../shared/data/vitb32 [--out FILE.md]

Runs every protocol of the data README ("Protocols and reference figures") on the raw arrays
through `TipAdapter` (exact mode), `tune.search` and `gda`, including the unbalanced caches
(both class weightings) and GDA, checks each figure to 0.01, and adds the
retrieval mode's numbers (with prediction agreement against exact) and Tip-Adapter-F's. The
npz files hold no augmented views, so Tip-Adapter-F trains on the shot keys as single views.
Writes one markdown report; exits 1 when a required figure does not match.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tipretrieval.method import gda, tune
from tipretrieval.method.adapter import RESCORE, TipAdapter
from tipretrieval.method.finetune import finetune

log = logging.getLogger("reproduce")
FIXED = (1.17, 1.0)
SHOTS = (1, 2, 4, 8, 16)


@dataclass
class Split:
    """Features and labels of one split."""

    x: np.ndarray
    y: np.ndarray


@dataclass
class Task:
    """A cache (keys, labels), a text classifier (or None), and val/test queries."""

    keys: Split
    val: Split
    test: Split
    num_classes: int
    text: np.ndarray | None = None


@dataclass
class Report:
    """Markdown rows: figure, expected, got, PASS/FAIL (or info when nothing is expected)."""

    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    failed: int = 0

    def check(self, what: str, expected: float, got: float, tol: float = 0.005 + 1e-9) -> None:
        """A required figure: PASS when |got - expected| <= tol (0.01 at two decimals)."""
        ok = abs(got - expected) <= tol
        self.failed += not ok
        self.rows.append((what, f"{expected:g}", f"{got:.4f}", "PASS" if ok else "FAIL"))
        log.info("%s: expected %g got %.4f %s", what, expected, got, "ok" if ok else "FAIL")

    def info(self, what: str, got: str, expected: str = "-") -> None:
        """A reported figure with no requirement (retrieval, Tip-Adapter-F, our own extras)."""
        self.rows.append((what, expected, got, "info"))
        log.info("%s: %s", what, got)

    def markdown(self) -> str:
        """The report as a markdown table."""
        head = ["| figure | expected | got | status |", "|---|---|---|---|"]
        body = [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        passed = sum(r[3] == "PASS" for r in self.rows)
        summary = f"\n{passed} required figures match, {self.failed} do not.\n"
        return "\n".join(head + body) + "\n" + summary


def acc(logits: np.ndarray, y: np.ndarray) -> float:
    """Top-1 % (argmax ties to the lowest index)."""
    return 100.0 * float(np.mean(logits.argmax(axis=1) == y))


def agree(a: np.ndarray, b: np.ndarray) -> float:
    """% of rows whose argmax agrees."""
    return 100.0 * float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))


def split(npz, name: str) -> Split:
    return Split(npz[f"{name}_x"].astype(np.float32), npz[f"{name}_y"].astype(np.int64))


def pets25(data: Path, shots: int) -> Task:
    """Oxford-Pets restricted to the 25 breeds with an ImageNet class, ImageNet text rows."""
    npz = np.load(data / "oxford_pets.npz")
    mapping = json.loads((data / "pets_to_imagenet.json").read_text())
    kept = sorted(int(k) for k in mapping)
    lut = np.full(37, -1)
    lut[kept] = np.arange(len(kept))
    text = np.load(data / "imagenet_text_vitb32.npy")[[mapping[str(k)] for k in kept]]

    def sub(name: str) -> Split:
        s = split(npz, name)
        keep = lut[s.y] >= 0
        return Split(s.x[keep], lut[s.y[keep]])

    return Task(sub(f"shots{shots}"), sub("val"), sub("test"), len(kept), text)


def imagenet(data: Path, shots: int) -> Task:
    """Cache = shots{K}; queries = shots4 rows not near-duplicates of a key; even/odd = val/test."""
    npz = np.load(data / "imagenet_shots.npz")
    cache, pool = split(npz, f"shots{shots}"), split(npz, "shots4")
    fresh = (pool.x @ cache.x.T).max(axis=1) < 0.95
    x, y = pool.x[fresh], pool.y[fresh]
    rank = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        rank[where] = np.arange(len(where))
    even = rank % 2 == 0
    text = np.load(data / "imagenet_text_vitb32.npy")
    return Task(cache, Split(x[even], y[even]), Split(x[~even], y[~even]), 1000, text)


def plain(data: Path, name: str, shots: int) -> Task:
    """A dataset's K-shot cache and its val/test splits (no text classifier)."""
    npz = np.load(data / f"{name}.npz")
    keys = split(npz, f"shots{shots}")
    return Task(keys, split(npz, "val"), split(npz, "test"), int(keys.y.max()) + 1)


def unbalanced(task: Task) -> Task:
    """The README's unbalanced cache: odd labels keep all keys, even labels their first 2."""
    keep = np.zeros(len(task.keys.y), dtype=bool)
    for c in np.unique(task.keys.y):
        where = np.flatnonzero(task.keys.y == c)
        keep[where if c % 2 else where[:2]] = True
    keys = Split(task.keys.x[keep], task.keys.y[keep])
    return Task(keys, task.val, task.test, task.num_classes, task.text)


def adapter(task: Task, alpha: float, beta: float, weighting: str = "balanced") -> TipAdapter:
    return TipAdapter(task.keys.x, task.keys.y, task.num_classes, task.text, alpha, beta,
                      weighting=weighting)


def searched(task: Task, weighting: str = "balanced") -> tuple[tune.TuneResult, TipAdapter]:
    """The official search on val, and the adapter at the chosen alpha, beta."""
    res = tune.search(task.val.x, task.val.y, task.keys.x, task.keys.y, task.text,
                      weighting=weighting, show_progress=False)
    return res, adapter(task, res.alpha, res.beta, weighting)


def retrieval_rows(rep: Report, what: str, ad: TipAdapter, x: np.ndarray, y: np.ndarray,
                   method: str, ks=(16, 64)) -> None:
    """Retrieval-mode accuracy and agreement with exact at each k, tail only and rescored."""
    exact = ad.logits(x, method=method)
    for k in ks:
        cells = []
        for rescore in (0, RESCORE):
            got = ad.logits(x, method=method, mode="retrieval", k=k, rescore=rescore)
            cells.append(f"{acc(got, y):.2f} / {agree(got, exact):.1f}%")
        rep.info(f"{what}, retrieval k={k}: test / agreement with exact (exact: "
                 f"{acc(exact, y):.2f}); tail only; tail + rescore {RESCORE}", "; ".join(cells))


def tip_f(rep: Report, what: str, task: Task) -> None:
    """Tip-Adapter-F from the fixed initial alpha, beta, keys as their own single views."""
    res = finetune(task.keys.x, task.keys.y, task.text, task.keys.x[:, None, :], task.keys.y,
                   task.val.x, task.val.y, *FIXED, show_progress=False)
    ad = TipAdapter(res.keys, task.keys.y, task.num_classes, task.text, res.tuned.alpha,
                    res.tuned.beta)
    rep.info(f"{what} Tip-Adapter-F (keys as single views): best epoch, alpha, beta, val, test",
             f"{res.best_epoch}, {res.tuned.alpha:.4g}, {res.tuned.beta:.4g}, "
             f"{res.tuned.val_acc:.2f}, {acc(ad.logits(task.test.x), task.test.y):.2f}")


PETS = {  # K: (fixed test, alpha, beta, val, test)
    1: (91.86, 2.855, 1.618, 90.74, 91.62), 2: (91.99, 2.855, 0.5485, 90.34, 91.90),
    4: (92.03, 1.84, 0.1, 90.14, 92.11), 8: (92.19, 2.71, 3.7915, 90.95, 91.46),
    16: (91.82, 2.565, 0.2725, 90.34, 91.86),
}
IMAGENET = {  # shots: (queries, val, test, zero-shot test, fixed, alpha, beta, val acc, test)
    1: (3991, 1999, 1992, 61.75, 62.45, 2.855, 2.17, 61.63, 63.35),
    2: (3982, 1998, 1984, 61.49, 62.25, 2.855, 2.101, 61.76, 62.80),
}
CACHE_ONLY = {  # dataset: K -> (cache-only beta=5.5, nearest class mean)
    "caltech101": {1: (75.78, 75.78), 2: (81.62, 83.08), 4: (85.15, 88.19),
                   8: (88.11, 89.49), 16: (89.78, 91.36)},
    "oxford_pets": {1: (35.73, 35.62), 2: (40.83, 44.15), 4: (55.49, 63.89),
                    8: (61.02, 68.52), 16: (67.35, 74.98)},
}
TRUNCATION = {  # (dataset, beta): agreement % of top-k truncation at k = 1, 4, 16, 64
    ("caltech101", 0.27): (88.4, 90.8, 94.8, 94.5), ("caltech101", 5.5): (89.4, 91.9, 95.6, 97.3),
    ("oxford_pets", 0.27): (62.6, 68.9, 78.1, 83.1), ("oxford_pets", 5.5): (64.7, 71.6, 80.8, 86.3),
    ("oxford_pets", 10.0): (66.3, 73.6, 82.9, 90.4),
}
PETS_TRUNCATION = (89.3, 85.7, 83.4, 79.5)
UNBALANCED_PETS = {  # weighting: (fixed test, searched alpha, beta, val, test)
    "sum": (47.24, 0.1, 6.034, 89.54, 91.46), "balanced": (92.07, 1.115, 0.6175, 90.74, 91.99),
}
UNBALANCED_CACHE_ONLY = {"caltech101": {"sum": 36.71, "balanced": 86.45},  # beta 5.5, test
                         "oxford_pets": {"sum": 41.62, "balanced": 52.28}}
GDA_PETS = {1: (None, None, 92.07), 2: (1e-4, None, 92.07), 4: (0.01, 90.74, 92.75),
            8: (0.1, 92.15, 92.67), 16: (1.0, 94.16, 92.19)}  # K: (alpha, val, test)
GDA_PLAIN = {"caltech101": {4: 90.67, 16: 93.87, "unbalanced": 85.31},  # no text, test
             "oxford_pets": {4: 76.23, 16: 86.59, "unbalanced": 58.03}}
KS = (1, 4, 16, 64)


def check_search(rep: Report, what: str, res: tune.TuneResult, ad: TipAdapter, task: Task,
                 want: tuple[float, float, float, float]) -> None:
    rep.check(f"{what} searched alpha", want[0], res.alpha, 1e-6)
    rep.check(f"{what} searched beta", want[1], res.beta, 1e-6)
    rep.check(f"{what} searched val", want[2], res.val_acc)
    rep.check(f"{what} searched test", want[3], acc(ad.logits(task.test.x), task.test.y))


def run_pets(rep: Report, data: Path) -> None:
    for k in SHOTS:
        task = pets25(data, k)
        what = f"Pets-25 K={k}"
        rep.check(f"{what} zero-shot test", 92.07,
                  acc(adapter(task, *FIXED).logits(task.test.x, method="zero-shot"), task.test.y))
        rep.check(f"{what} fixed alpha=1.17 beta=1 test", PETS[k][0],
                  acc(adapter(task, *FIXED).logits(task.test.x), task.test.y))
        res, ad = searched(task)
        check_search(rep, what, res, ad, task, PETS[k][1:])
        rep.info(f"{what} grid cells tied at the best val", str(int((res.grid == res.val_acc)
                                                                     .sum())))
        if k == 16:
            rep.check("Pets-25 zero-shot val", 89.94,
                      acc(ad.logits(task.val.x, method="zero-shot"), task.val.y))
            retrieval_rows(rep, what, ad, task.test.x, task.test.y, "tip")
            exact = ad.logits(task.test.x)
            for k_top, want in zip(KS, PETS_TRUNCATION, strict=True):
                trunc = ad.text_logits(task.test.x) + np.float32(ad.alpha) * ad.cache_term(
                    task.test.x, mode="retrieval", k=k_top, tail=False)
                rep.check(f"{what} searched, top-{k_top} truncation agreement", want,
                          agree(trunc, exact), 0.05 + 1e-9)
            tip_f(rep, what, task)


def run_imagenet(rep: Report, data: Path) -> None:
    for shots, want in IMAGENET.items():
        task = imagenet(data, shots)
        what = f"ImageNet cache=shots{shots}"
        rep.check(f"{what} query rows", want[0],
                  len(task.val.y) + len(task.test.y), 0)
        rep.check(f"{what} val rows", want[1], len(task.val.y), 0)
        rep.check(f"{what} test rows", want[2], len(task.test.y), 0)
        rep.check(f"{what} zero-shot test", want[3],
                  acc(adapter(task, *FIXED).logits(task.test.x, method="zero-shot"), task.test.y))
        rep.check(f"{what} fixed alpha=1.17 beta=1 test", want[4],
                  acc(adapter(task, *FIXED).logits(task.test.x), task.test.y))
        res, ad = searched(task)
        check_search(rep, what, res, ad, task, want[5:])
        retrieval_rows(rep, f"{what} searched", ad, task.test.x, task.test.y, "tip")
        if shots == 1:
            tip_f(rep, what, task)


def run_cache_only(rep: Report, data: Path) -> None:
    for name, table in CACHE_ONLY.items():
        for k, (want_cache, want_ncm) in table.items():
            task = plain(data, name, k)
            ad = adapter(task, 1.0, 5.5)
            rep.check(f"{name} K={k} cache-only beta=5.5 test", want_cache,
                      acc(ad.logits(task.test.x, method="cache"), task.test.y))
            means = np.zeros((task.num_classes, task.keys.x.shape[1]))
            np.add.at(means, task.keys.y, task.keys.x)
            means /= np.linalg.norm(means, axis=1, keepdims=True)
            rep.check(f"{name} K={k} nearest class mean test", want_ncm,
                      acc(task.test.x @ means.astype(np.float32).T, task.test.y))
            if k == 16:
                retrieval_rows(rep, f"{name} K=16 cache-only beta=5.5", ad, task.test.x,
                               task.test.y, "cache")


def run_truncation(rep: Report, data: Path) -> None:
    """Agreement with exact of top-k truncation (README figures) and of the tail correction."""
    for name in CACHE_ONLY:
        task = plain(data, name, 16)
        for beta in (0.27, 5.5, 10.0):
            ad = adapter(task, 1.0, beta)
            exact = ad.cache_term(task.test.x)
            tails = []
            for i, k in enumerate(KS):
                trunc = ad.cache_term(task.test.x, mode="retrieval", k=k, tail=False)
                want = TRUNCATION.get((name, beta))
                what = f"{name} K=16 cache-only beta={beta}, top-{k} truncation agreement"
                if want is None:
                    rep.info(what, f"{agree(trunc, exact):.1f}")
                else:
                    rep.check(what, want[i], agree(trunc, exact), 0.05 + 1e-9)
                tail, rescored = (ad.logits(task.test.x, method="cache", mode="retrieval",
                                            k=k, rescore=r) for r in (0, RESCORE))
                tails.append(f"k={k}: {agree(tail, exact):.1f} / {agree(rescored, exact):.1f}")
            rep.info(f"{name} K=16 cache-only beta={beta}, agreement: tail only / tail + "
                     f"rescore {RESCORE}", ", ".join(tails))


def run_unbalanced(rep: Report, data: Path) -> None:
    """Sum (official) against balanced class weighting on the README's unbalanced caches."""
    task = unbalanced(pets25(data, 16))
    rep.check("Pets-25 unbalanced keys", 218, len(task.keys.y), 0)
    rep.check("Pets-25 unbalanced zero-shot test", 92.07,
              acc(adapter(task, *FIXED).logits(task.test.x, method="zero-shot"), task.test.y))
    for weighting, want in UNBALANCED_PETS.items():
        what = f"Pets-25 unbalanced, {weighting}"
        rep.check(f"{what}, alpha=1.17 beta=1 test", want[0],
                  acc(adapter(task, *FIXED, weighting).logits(task.test.x), task.test.y))
        res, ad = searched(task, weighting)
        check_search(rep, what, res, ad, task, want[1:])
    for name, table in UNBALANCED_CACHE_ONLY.items():
        task = unbalanced(plain(data, name, 16))
        for weighting, want in table.items():
            ad = adapter(task, 1.0, 5.5, weighting)
            rep.check(f"{name} unbalanced cache-only beta=5.5, {weighting}, test", want,
                      acc(ad.logits(task.test.x, method="cache"), task.test.y))


def gda_searched(task: Task) -> tuple[gda.GDASearch, TipAdapter]:
    """GDA fitted on the keys, alpha chosen on val, and the adapter using it."""
    ad = adapter(task, *FIXED)
    clip = ad.text_logits(task.val.x) if task.text is not None else None
    res = gda.search_alpha(clip, ad.gda_term(task.val.x), task.val.y)
    ad.gda_alpha = res.alpha
    return res, ad


def run_gda(rep: Report, data: Path) -> None:
    """GDA (Wang et al., ICLR 2024) with text on Pets-25 and without text (LDA)."""
    for k, (alpha, val, test) in GDA_PETS.items():
        task = pets25(data, k)
        res, ad = gda_searched(task)
        what = f"Pets-25 K={k} GDA"
        if alpha is not None:
            rep.check(f"{what} alpha", alpha, res.alpha, 1e-9)
        if val is not None:
            rep.check(f"{what} val", val, res.val_acc)
        rep.check(f"{what} test", test, acc(ad.logits(task.test.x, method="gda"), task.test.y))
    for name, table in GDA_PLAIN.items():
        for k, want in table.items():
            task = plain(data, name, 16) if k == "unbalanced" else plain(data, name, k)
            task = unbalanced(task) if k == "unbalanced" else task
            _, ad = gda_searched(task)
            label = "unbalanced K=16" if k == "unbalanced" else f"K={k}"
            rep.check(f"{name} {label} GDA without text test", want,
                      acc(ad.logits(task.test.x, method="gda"), task.test.y))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the vitb32 feature folder")
    parser.add_argument("--out", type=Path, help="markdown file (default: stdout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    rep = Report()
    for section in (run_pets, run_imagenet, run_cache_only, run_truncation, run_unbalanced,
                    run_gda):
        section(rep, args.data)
    text = "# Reproduction on real CLIP ViT-B/32 features\n\n" + rep.markdown()
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
