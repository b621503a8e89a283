"""crdtdb.query: the merged state of a region in DuckDB (SQL, time travel, exports).

``connect(dir)`` returns a DuckDB connection with the store's tables and one
view per collection; ``refresh(dir)`` brings the materialisation up to date.
See :mod:`.materialize` for how the state is kept as Parquet beside the
store, and :mod:`.connect` for the tables.
"""

from __future__ import annotations

import os

import crdtdb

from .connect import AsOfSpec as AsOfSpec
from .connect import connect as connect
from .connect import refresh_connection as refresh_connection
from .materialize import RefreshResult as RefreshResult
from .materialize import refresh as _refresh

__all__ = ["AsOfSpec", "RefreshResult", "connect", "refresh", "refresh_connection"]


def refresh(
    db_or_dir: crdtdb.Database | str | os.PathLike[str], *, full: bool = False
) -> RefreshResult:
    """Bring the materialisation of a store up to date (see :mod:`.materialize`)."""
    if isinstance(db_or_dir, crdtdb.Database):
        return _refresh(db_or_dir, full=full)
    with crdtdb.open(os.fspath(db_or_dir)) as db:
        return _refresh(db, full=full)
