"""crdtdb: a geo-replicated CRDT document database.

The embedded core. ``import crdtdb`` loads only the standard library and
pycrdt; replication (``crdtdb.sync``, aioquic) and analytics
(``crdtdb.query``, DuckDB) are imported only when used.
"""

from __future__ import annotations

from . import errors as errors
from .database import Database as Database
from .database import Options as Options
from .database import Subscription as Subscription
from .database import open as open
from .errors import CrdtdbError as CrdtdbError
from .history import AsOf as AsOf
from .hlc import Hlc as Hlc
from .records import UpdateRecord as UpdateRecord
from .transaction import Transaction as Transaction
from .values import DocArray as DocArray
from .values import DocMap as DocMap
from .values import DocText as DocText

__version__ = "0.1.0"

__all__ = [
    "AsOf",
    "CrdtdbError",
    "Database",
    "DocArray",
    "DocMap",
    "DocText",
    "Hlc",
    "Options",
    "Subscription",
    "Transaction",
    "UpdateRecord",
    "__version__",
    "errors",
    "open",
]
