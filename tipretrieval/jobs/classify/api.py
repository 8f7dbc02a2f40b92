"""Classify a whole query store (or a folder of images) into a resumable output directory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from ...cache.cache import Cache
from ...encode.resolve import encode_into_store, encoder_for
from ...encode.sources import scan_source
from ...errors import BadInput, CorruptData, TipError
from ...store.store import Store
from ...util.ray_setup import ENGINES
from .journal import JobSpec, Journal, job_lock, open_job
from .local import run_local
from .options import ClassifyOptions
from .output import Results, writer_for

log = logging.getLogger(__name__)


def classify_store(cache_path: str | Path, store_path: str | Path, out: str | Path,
                   options: ClassifyOptions | None = None, *, overwrite: bool = False,
                   accept_new_generation: bool = False, engine: str = "local",
                   ray_address: str | None = None, show_progress: bool = True) -> Journal:
    """Classify every query row of a store into `out`, resuming a killed run of the same job.

    One job at a time writes `out`: a second one fails after `LOCK_WAIT_S` seconds.
    """
    if engine not in ENGINES:
        raise BadInput(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    options = options or ClassifyOptions()
    cache = Cache.load(cache_path)
    if cache.text is None and options.method in ("zero-shot", "tip"):
        raise BadInput(f"cache {cache_path} has no text classifier, so method "
                       f"'{options.method}' has nothing to score",
                       "use `method=` cache or gda, or rebuild the cache with `text=` or "
                       "`templates=`")
    if cache.stale_tuning():
        log.warning("%s", cache.stale_tuning())
    store = Store.open(store_path)
    cache.provenance.check_compatible(store.provenance, what=f"query store {store_path}")
    _check_split(store, options.split)
    spec = JobSpec(cache_id=cache.info.cache_id or str(Path(cache_path).resolve()),  # old caches
                   cache_generation=cache.generation, store_id=store.store_id,
                   store_generation=store.generation, options=options)
    out = _make_out(out)
    with _os_errors(out):
        with job_lock(out):
            journal = _run(cache, store, out, spec, overwrite=overwrite,
                           accept_new_generation=accept_new_generation, engine=engine,
                           ray_address=ray_address, show_progress=show_progress)
    log.info("%d rows classified into %s", journal.to_json()["rows"], out)
    return journal


def _run(cache: Cache, store: Store, out: Path, spec: JobSpec, *, overwrite: bool,
         accept_new_generation: bool, engine: str, ray_address: str | None,
         show_progress: bool) -> Journal:
    """Open (or resume) the job in `out`, classify the parts it lacks and mark it complete."""
    journal = open_job(out, spec, store.manifest.next_row_id, overwrite=overwrite,
                       accept_new_generation=accept_new_generation,
                       cache_path=str(cache.path.resolve()))
    if journal.complete:
        log.info("%s was already complete", out)
    elif engine == "ray":
        from .ray_engine import run_ray  # optional dependency: ray

        run_ray(cache, store, out, journal, address=ray_address, show_progress=show_progress)
    else:
        run_local(cache, store, out, journal, show_progress=show_progress)
    journal.finish(out)  # again when complete: a kill may have come before `_SUCCESS`
    return journal


def _check_split(store: Store, split: str | None) -> None:
    """BadInput naming the store's splits when `split` is not one of them."""
    splits = sorted(store.split_counts())
    if split is not None and split not in splits:
        raise BadInput(f"query store {store.path} has no split {split!r}: choose one of "
                       f"{', '.join(splits) or '(none: the store is empty)'}")


def _make_out(out: str | Path) -> Path:
    """Create the output directory `out`; BadInput when it is a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out} is a file", "give a directory as `out=`")
    with _os_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _os_errors(out: Path) -> Iterator[None]:
    """Report an OSError (no permission, disk full ...) as one line; a rerun resumes."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise TipError(f"classify into {out} failed: {exc.strerror or exc}{where}: fix that "
                       "and rerun to resume") from exc


def iter_output(out: str | Path, *, allow_partial: bool = False) -> Iterator[Results]:
    """The committed parts of a classify output, in input order (bounded memory).

    Each part's sha256 is checked first: CorruptData when a part is missing or damaged.
    """
    out = Path(out)
    journal = Journal.load(out)
    if not journal.complete and not allow_partial:
        raise TipError(f"{out} is incomplete: rerun the classify command to finish it")
    writer = writer_for(journal.spec.options.fmt)
    for index in sorted(journal.parts):
        record = journal.parts[index]
        problem = record.problem(out)
        if problem:
            raise CorruptData(f"{out / record.file} is {problem}: rerun the classify command "
                              "to write it again")
        yield writer.read(out / record.file)


def read_output(out: str | Path, *, allow_partial: bool = False) -> Results:
    """All results of a classify output as one `Results` (committed parts only)."""
    parts = list(iter_output(out, allow_partial=allow_partial))
    if not parts:
        raise TipError(f"{out} holds no results: the query store selected no rows")
    return Results.concat(parts)


QUERY_STORE = "_query_store"


def store_from_images(cache_path: str | Path, source: str | Path, out: str | Path, *,
                      model: str | None = None, pretrained: str | None = None,
                      checkpoint: str | Path | None = None, device: str | None = "auto") -> Path:
    """Encode the images of `source` with the cache's encoder into `out/_query_store`.

    The encoder is `encoder_for(the cache's provenance, ...)`; `model` may be an open_clip
    model-config JSON. Images already stored are skipped, so a killed job resumes here too.
    """
    encoder = encoder_for(Cache.load(cache_path).provenance, model=model, pretrained=pretrained,
                          checkpoint=checkpoint, device=device)
    path = _make_out(out) / QUERY_STORE
    encode_into_store([scan_source(source, unlabelled=True)], path, encoder, split="query",
                      show_progress=False)
    return path
