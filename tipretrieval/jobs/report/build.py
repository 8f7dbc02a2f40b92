"""`build_report`: a classify output -> a static HTML site, in one bounded-memory pass over its
parts, then thumbnails (made once, reused) of the few rows it shows, then the pages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...cache.cache import Cache
from ...cache.files import META
from ...cache.labels import class_map
from ...errors import BadInput
from ...store.manifest import MANIFEST_NAME
from ...store.store import Store
from ..classify.api import QUERY_STORE, iter_output
from ..classify.journal import JOURNAL, Journal
from ..classify.output import Results
from . import html
from .labelling import write_label_files
from .model import Card, Report, Shot
from .select import Smallest, margins, rank_in_group, sample_key
from .stats import Stats
from .thumbs import make_thumbnails

TOP_SHOWN = 3  # classes shown per row
SHOTS_SHOWN = 8  # cache keys shown per class page
SHOT_THUMB = 64  # pixels of the thumbnails of shots (evidence and class shots)


@dataclass(frozen=True)
class ReportOptions:
    """How much a report shows: rows per class page, rows in all, rows to label, thumbnails."""

    per_class: int = 48
    max_rows: int = 20_000  # rows shown over all class pages: bounds the report's size
    to_label: int = 50
    thumb_size: int = 128
    seed: int = 0
    title: str | None = None
    links: tuple[tuple[str, str], ...] = ()  # (text, href) of related pages
    notes: tuple[str, ...] = ()  # extra caveats shown on every page

    def __post_init__(self) -> None:
        for name in ("per_class", "max_rows", "thumb_size"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name} is {getattr(self, name)}", f"`{name}=` must be at least 1")
        if self.to_label < 0:
            raise BadInput(f"to_label is {self.to_label}", "`to_label=` must be 0 or more")


@dataclass
class ReportResult:
    """Where a report went, what it holds and what it cost."""

    index: Path
    rows: int
    pages: int
    shown: int
    thumbnails: int
    bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def _finished_journal(output: Path) -> Journal:
    """The journal of a finished classify output; BadInput naming the fix otherwise."""
    if not (output / JOURNAL).exists():
        raise BadInput(f"{output} is not a classify output (no {JOURNAL})",
                       "give the output directory of a classify job")
    journal = Journal.load(output)
    if not journal.complete:
        raise BadInput(f"{output} is incomplete", "rerun its classify job to finish it")
    return journal


def _open_cache(output: Path, journal: Journal, cache_path: str | Path | None) -> Cache:
    path = Path(cache_path or journal.cache_path or journal.spec.cache_id)  # older: a path
    if not (path / META).exists():
        raise BadInput(f"the cache of {output} ({path}) is gone", "pass the cache as `cache=`")
    cache = Cache.load(path)
    if journal.cache_path and cache.info.cache_id not in (None, journal.spec.cache_id):
        raise BadInput(f"the cache at {path} is not the one {output} was classified with "
                       "(rebuilt?)", "pass that cache as `cache=`, or classify again")
    return cache


def _open_store(output: Path, journal: Journal, store_path: str | Path | None) -> Store | None:
    """The query store (for images and labels): given, or the one `classify --images` made."""
    if store_path is None:
        store_path = output / QUERY_STORE
        if not (store_path / MANIFEST_NAME).exists():
            return None
    store = Store.open(store_path)
    if store.store_id != journal.spec.store_id:
        raise BadInput(f"store {store_path} is not the store {output} classified",
                       "pass that store as `store=`")
    return store


def _labels_by_row(store: Store | None, classes: list[str], split: str | None
                   ) -> np.ndarray | None:
    """Cache class index (-1: none) of every store row id, or None when no row is labelled."""
    if store is None or not sum(store.class_counts(split).values()):
        return None
    mapping = np.append(class_map(classes, store.classes), -1)  # label -1 -> -1
    out = np.full(store.manifest.next_row_id, -1, dtype=np.int32)
    for rows in store.iter_rows(65536, split=split, columns=("features", "labels", "row_ids"),
                                features_dtype=None):
        out[rows.row_ids] = mapping[rows.labels]
    return out


def _sources(store: Store | None, row_ids: np.ndarray) -> dict[int, tuple[str, str]]:
    """Row id -> (id, source image path or '') of these rows of `store`."""
    if store is None or not len(row_ids):
        return {}
    rows = store.select(row_ids=np.unique(row_ids), features_dtype=None,
                        columns=("features", "ids", "row_ids", "sources"))
    paths = rows.sources if rows.sources is not None else [""] * len(rows)
    return {int(r): (str(i), str(s or "")) for r, i, s in
            zip(rows.row_ids, rows.ids, paths, strict=True)}


def _uri(path: str | None) -> str | None:
    return Path(path).resolve().as_uri() if path else None


def _cards(results: Results | None, labels: np.ndarray | None, classes: list[str],
           thumbs: dict[str, str], sources: dict[str, str]) -> list[Card]:
    """Cards of the rows of `results` (thumbnail keys: 'q<row id>', evidence 'k<row id>')."""
    if results is None:
        return []
    names = np.asarray(classes, dtype=object)
    ev_rows = results.evidence_row_ids
    out = []
    for i, (row_id, row_margin) in enumerate(zip(results.row_ids.tolist(),
                                                 margins(results).tolist(), strict=True)):
        top = [(int(c), str(names[c]), float(p)) for c, p in
               zip(results.classes[i, :TOP_SHOWN], results.probs[i, :TOP_SHOWN], strict=True)]
        label = None if labels is None or labels[row_id] < 0 else str(names[labels[row_id]])
        evidence = []
        if ev_rows is not None:
            for j, key_row in enumerate(ev_rows[i].tolist()):
                if key_row < 0:
                    continue
                key = f"k{key_row}"
                evidence.append(Shot(str(results.evidence_ids[i, j]),
                                     str(names[results.evidence_labels[i, j]]),
                                     float(results.evidence_sims[i, j]), thumbs.get(key),
                                     _uri(sources.get(key))))
        out.append(Card(str(results.ids[i]), row_id, top, row_margin, label,
                        thumbs.get(f"q{row_id}"), _uri(sources.get(f"q{row_id}")), evidence))
    return out


def _notes(stats: Stats, cap: int, has_images: bool, has_evidence: bool, labelled: bool,
           cache: Cache, journal: Journal) -> list[str]:
    notes = [f"Counts, histogram and accuracies cover all {stats.rows} rows; each class page "
             f"shows a fixed random sample of at most {cap} of its rows (report cap: "
             f"--per-class and --max-rows over {len(cache.classes)} classes)."]
    if not has_images:
        notes.append("These rows have no source images (features imported or synthetic, or "
                     "no --store given): ids are shown instead of thumbnails.")
    if not has_evidence:
        notes.append("This output holds no evidence shots: classify with --evidence N to see "
                     "the cache keys behind each prediction.")
    if labelled and stats.labelled < stats.rows:
        notes.append(f"{stats.labelled} of the {stats.rows} rows have a known label.")
    if cache.generation != journal.spec.cache_generation:
        notes.append(f"The cache is at generation {cache.generation}; the rows were classified "
                     f"with generation {journal.spec.cache_generation} (cache keys per class "
                     "are the current ones).")
    return notes


@dataclass
class _Scan:
    """What one pass over an output's parts gathers."""

    stats: Stats
    sample: Smallest  # per predicted class, the rows its page shows
    unsure: Smallest  # per predicted class, the least sure rows
    has_evidence: bool = False

    def add(self, part: Results, labels: np.ndarray | None, seed: int) -> None:
        self.stats.add(part, labels)
        self.sample.add(part, sample_key(part.row_ids, seed))
        self.unsure.add(part, margins(part) if part.top_k > 1 else part.probs[:, 0])
        self.has_evidence = self.has_evidence or part.evidence > 0


def build_report(output: str | Path, html_dir: str | Path, *, store: str | Path | None = None,
                 cache: str | Path | None = None, options: ReportOptions | None = None
                 ) -> ReportResult:
    """Write the HTML report of the finished classify output `output` into `html_dir`.

    `store` is the query store (default: the one `classify --images` made): its source images
    give thumbnails and its labels give accuracies. `cache` defaults to the output's cache.
    """
    started = time.perf_counter()
    options = options or ReportOptions()
    output, html_dir = Path(output), Path(html_dir)
    journal = _finished_journal(output)
    cache_obj = _open_cache(output, journal, cache)
    query = _open_store(output, journal, store)
    classes = list(cache_obj.classes)
    labels = _labels_by_row(query, classes, journal.spec.options.split)
    cap = max(1, min(options.per_class, options.max_rows // max(1, len(classes))))
    scan = _Scan(Stats(len(classes)), Smallest(cap), Smallest(options.to_label))
    for part in iter_output(output):
        scan.add(part, None if labels is None else labels[part.row_ids], options.seed)
    chosen = scan.unsure.spread(options.to_label)
    shown = [r for r in (scan.sample.results, chosen) if r is not None]
    class_keys = _class_keys(cache_obj)
    sources, key_ids = _image_sources(shown, class_keys, query, cache_obj)
    html_dir.mkdir(parents=True, exist_ok=True)
    row_images = {k: v for k, v in sources.items() if k.startswith("q")}
    thumbs = make_thumbnails(row_images, html_dir, options.thumb_size)
    thumbs |= make_thumbnails({k: v for k, v in sources.items() if k.startswith("k")},
                              html_dir, SHOT_THUMB)
    uncertain = _cards(chosen, labels, classes, thumbs, sources)
    report = Report(
        title=options.title or f"Report of {output.name}", output=str(output.resolve()),
        classes=classes, stats=scan.stats, shots=cache_obj.class_counts(),
        samples={c: _cards(r, labels, classes, thumbs, sources)
                 for c, r in scan.sample.by_class().items()},
        class_shots=_class_shots(class_keys, classes, thumbs, sources, key_ids),
        per_class_cap=cap, uncertain=uncertain,
        notes=[*options.notes, *_notes(scan.stats, cap, bool(row_images), scan.has_evidence,
                                       labels is not None, cache_obj, journal)],
        label_files=write_label_files(html_dir, uncertain, row_images),
        links=list(options.links))
    pages = _write_pages(html_dir, report)
    size = sum(p.stat().st_size for p in html_dir.rglob("*") if p.is_file())
    return ReportResult(html_dir / html.INDEX, scan.stats.rows, pages,
                        sum(len(v) for v in report.samples.values()), len(set(thumbs.values())),
                        size, time.perf_counter() - started, report.notes)


def _class_keys(cache: Cache) -> dict[int, np.ndarray]:
    """Up to SHOTS_SHOWN key row ids of each class (the oldest), for the class pages."""
    order, rank = rank_in_group(cache.labels, cache.row_ids)
    keep = order[rank < SHOTS_SHOWN]
    out: dict[int, list[int]] = {}
    for label, row_id in zip(cache.labels[keep].tolist(), cache.row_ids[keep].tolist(),
                             strict=True):
        out.setdefault(label, []).append(row_id)
    return {c: np.array(rows, dtype=np.int64) for c, rows in out.items()}


def _image_sources(shown: list[Results], class_keys: dict[int, np.ndarray],
                   query: Store | None, cache: Cache) -> tuple[dict[str, str], dict[str, str]]:
    """(key -> source image path, key -> store id) of the shown rows ('q<row id>') and of the
    shown cache keys (evidence and class shots: 'k<row id>', from the cache's store)."""
    found = {}
    if shown:
        rows = np.concatenate([r.row_ids for r in shown])
        found = {f"q{r}": v for r, v in _sources(query, rows).items()}
    keys = [r.evidence_row_ids.reshape(-1) for r in shown
            if r.evidence_row_ids is not None] + list(class_keys.values())
    if keys and cache.info.store_path and Path(cache.info.store_path).exists():
        keys = np.concatenate(keys)
        shots = Store.open(cache.info.store_path)
        found |= {f"k{r}": v for r, v in _sources(shots, keys[keys >= 0]).items()}
    return ({k: path for k, (_, path) in found.items() if path},
            {k: i for k, (i, _) in found.items()})


def _class_shots(class_keys: dict[int, np.ndarray], classes: list[str], thumbs: dict[str, str],
                 sources: dict[str, str], ids: dict[str, str]) -> dict[int, list[Shot]]:
    """The shown keys of each class, named by their store ids (row ids when unknown)."""
    return {c: [Shot(ids.get(f"k{r}", f"row {r}"), classes[c], None, thumbs.get(f"k{r}"),
                     _uri(sources.get(f"k{r}"))) for r in rows.tolist()]
            for c, rows in class_keys.items()}


def _write_pages(html_dir: Path, report: Report) -> int:
    """Write every page (plain writes: a report is remade by rerunning the command)."""
    pages = {html.INDEX: html.index_page(report), html.LABEL_PAGE: html.label_page(report)}
    for c in range(len(report.classes)):
        pages[html.class_file(c)] = html.class_page(report, c)
    for name, text in pages.items():
        (html_dir / name).write_text(text, encoding="utf-8")
    return len(pages)
