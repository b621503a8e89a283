"""Atomic multi-document transactions.

Inside ``with db.transaction() as tx:`` every edit is made on the live CRDT
documents and captured; on a clean exit all of them are committed in one
SQLite transaction under one HLC. If the block raises, the edited documents
are dropped from memory and reloaded from disk on next use: nothing of the
transaction is stored, visible or replicated.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._cache import DocHandle
from .errors import InvalidValueError, TransactionError
from .hlc import Hlc
from .ids import validate_doc_id
from .values import DocMap, plain, read_json, to_crdt

if TYPE_CHECKING:
    from .database import Database

__all__ = ["Transaction"]


class Transaction:
    """A unit of work across documents; use it as a context manager."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._handles: dict[str, DocHandle] = {}
        self._views: dict[str, DocMap] = {}
        self._state = "new"
        self.hlc: Hlc | None = None
        """The commit's HLC, once committed (None if nothing changed)."""

    def __enter__(self) -> Transaction:
        if self._state != "new":
            raise TransactionError("a transaction can be entered once: start a new one")
        self._db._begin_transaction(self)
        self._state = "open"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.hlc = self._db._commit(self._handles)
            else:
                self._db._rollback(self._handles)
        finally:
            self._state = "done"
            self._db._end_transaction(self)

    def _guard(self) -> None:
        if self._state != "open":
            raise TransactionError(
                "this transaction has ended: edit documents inside the `with db.transaction()`"
                " block, or start a new transaction"
            )

    def _handle(self, doc_id: str) -> DocHandle:
        self._guard()
        handle = self._handles.get(doc_id)
        if handle is None:
            handle = self._db._handle(validate_doc_id(doc_id))
            handle.begin()
            self._handles[doc_id] = handle
        return handle

    @property
    def handles(self) -> dict[str, DocHandle]:
        return self._handles

    def doc(self, doc_id: str) -> DocMap:
        """The live root of a document; edits to it (and nested values) are CRDT edits."""
        view = self._views.get(doc_id)
        if view is None:
            view = self._views[doc_id] = DocMap(self._handle(doc_id).root, self._guard)
        self._handles[doc_id].tombstone = False
        return view

    def get(self, doc_id: str) -> dict[str, Any] | None:
        """The document as this transaction sees it (its own edits included)."""
        handle = self._handle(doc_id)
        if handle.tombstone or not (handle.live or handle.ensure_live):
            return None
        result: dict[str, Any] = read_json(handle.root)
        return result

    def put(self, doc_id: str, value: Mapping[str, Any]) -> None:
        """Make the document equal to ``value`` (keys not in it are removed)."""
        converted = self._convert(value)
        handle = self._handle(doc_id)
        current = read_json(handle.root)
        for key in [k for k in current if k not in value]:
            del handle.root[key]
        self._set_changed(handle, current, value, converted)

    def update(self, doc_id: str, patch: Mapping[str, Any]) -> None:
        """Set the given top-level keys, leaving the others as they are."""
        converted = self._convert(patch)
        handle = self._handle(doc_id)
        current = {key: plain(handle.root[key]) for key in patch if key in handle.root}
        self._set_changed(handle, current, patch, converted)

    def delete(self, doc_id: str) -> None:
        """Delete the whole document (see the README for concurrent edits)."""
        handle = self._handle(doc_id)
        handle.clear()
        handle.ensure_live = False
        handle.tombstone = True

    @staticmethod
    def _convert(value: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise InvalidValueError(
                f"a document is a JSON object (dict), not {type(value).__name__}: wrap it,"
                " e.g. {'value': ...}"
            )
        return {key: to_crdt(item, f"$.{key}") for key, item in to_crdt_items(value)}

    @staticmethod
    def _set_changed(
        handle: DocHandle,
        current: dict[str, Any],
        value: Mapping[str, Any],
        converted: dict[str, Any],
    ) -> None:
        # Unchanged keys are left alone so that concurrent edits to them elsewhere survive.
        for key, item in converted.items():
            if (
                key not in current
                or current[key] != value[key]
                or _type_differs(current[key], value[key])
            ):
                handle.root[key] = item
        handle.ensure_live = True
        handle.tombstone = False


def to_crdt_items(value: Mapping[str, Any]) -> list[tuple[str, Any]]:
    items = []
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidValueError(f"key {key!r} is not a str: JSON keys are text")
        items.append((key, item))
    return items


def _type_differs(a: object, b: object) -> bool:
    # True == 1 in Python, but a JSON bool is not a number.
    return isinstance(a, bool) != isinstance(b, bool)
