"""One writer's hold of a store that may not exist yet: open or create it, then write, as one step.

Every writer that may create a store (`import` of a file or a dump, `extract`) goes through
`hold`: it checks for the store and creates it under the same hold of the writer lock, so two
writers racing to create one store serialise and the second opens the first one's store and
appends. A store created under a hold and still empty when the hold ends with an error is
removed again (nobody else can have committed to it), so a failed first import leaves nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..provenance import Provenance
from .lock import LOCK_TIMEOUT
from .manifest import MANIFEST_NAME
from .store import Store, check_can_create


@dataclass
class Hold:
    """The store at `path` under the writer lock: `store` is None until one exists."""

    path: Path
    store: Store | None
    created: bool = False
    timeout: float = LOCK_TIMEOUT  # the store's `lock_timeout`

    def create(self, *, dim: int, provenance: Provenance, classes=(),
               dtype: str = "float16") -> Store:
        """Create the store (there was none when the hold began); see `Store.create`."""
        self.store = Store.create(self.path, dim=dim, provenance=provenance, classes=classes,
                                  dtype=dtype, lock_timeout=self.timeout)
        self.created = True
        return self.store


@contextlib.contextmanager
def hold(path: Path | str, timeout: float = LOCK_TIMEOUT) -> Iterator[Hold]:
    """Hold the writer lock of the store at `path` (missing: a new or empty folder) with the
    store there opened; on error, a store created under this hold that holds no rows is removed
    (with its folder when this call made it). StoreLocked after `timeout` s."""
    path = Path(path)
    if not (path / MANIFEST_NAME).exists():
        check_can_create(path)  # refuse a non-empty folder before making a lock in it
    made_dir = not path.exists()
    with Store.writing(path, timeout):
        existed = (path / MANIFEST_NAME).exists()
        opened = Store.open(path, lock_timeout=timeout) if existed else None
        held = Hold(path, opened, timeout=timeout)
        try:
            yield held
        except BaseException:
            if not existed and (held.store is None or not len(held.store.refresh())):
                Store.discard(path, made_dir)
            raise
