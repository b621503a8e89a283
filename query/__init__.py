"""crdtdb.query: the merged state of a region in DuckDB (SQL, time travel, exports).

``connect(dir)`` returns a DuckDB connection with the store's tables and one
view per collection; ``refresh(dir)`` brings the materialisation up to date.
See :mod:`.materialize` for how the state is kept as Parquet beside the
store, and :mod:`.connect` for the tables.
"""

from __future__ import annotations

import os

import crdtdb

from .area import RefreshResult as RefreshResult
from .connect import AsOfSpec as AsOfSpec
from .connect import connect as connect
from .connect import refresh_connection as refresh_connection
from .materialize import Progress as Progress
from .materialize import refresh as _refresh

__all__ = ["AsOfSpec", "Progress", "RefreshResult", "connect", "refresh", "refresh_connection"]


def refresh(
    db_or_dir: crdtdb.Database | str | os.PathLike[str],
    *,
    full: bool = False,
    progress: Progress | None = None,
) -> RefreshResult:
    """Bring the materialisation of a store up to date (see :mod:`.materialize`).

    ``progress(stage, done, total)`` is called as a long refresh goes.
    """
    if isinstance(db_or_dir, crdtdb.Database):
        return _refresh(db_or_dir, full=full, progress=progress)
    with crdtdb.open(os.fspath(db_or_dir)) as db:
        return _refresh(db, full=full, progress=progress)
