"""Atomic multi-document transactions.

Inside ``with db.transaction() as tx:`` every edit is made on the live CRDT
documents and captured; on a clean exit all of them are committed in one
SQLite transaction under one HLC. If the block raises, the edited documents
are dropped from memory and reloaded from disk on next use: nothing of the
transaction is stored, visible or replicated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pycrdt import Text

from ._cache import DocHandle
from .errors import (
    InvalidValueError,
    ReservedCollectionError,
    TransactionError,
    UsageError,
    shown,
)
from .hlc import Hlc
from .ids import RESERVED_COLLECTION, collection_of, validate_doc_id
from .records import UpdateRecord
from .values import (
    DocArray,
    DocMap,
    DocText,
    from_crdt,
    is_same_slot,
    plain,
    read_json,
    to_crdt,
)

if TYPE_CHECKING:
    from .engine import Engine
    from .writes import Writer

__all__ = ["Transaction"]


class Transaction:
    """A unit of work across documents; use it as a context manager."""

    def __init__(
        self, engine: Engine, writer: Writer, *, reserved: bool = False, one_shot: bool = False
    ) -> None:
        self._engine = engine
        self._reserved = reserved
        self._one_shot = one_shot
        """Made by ``db.put``/``db.update``: no application code runs inside it, so it
        may join an open commit group (see :mod:`crdtdb.group`)."""
        self._writer = writer
        self._handles: dict[str, DocHandle] = {}
        self._views: dict[str, DocMap] = {}
        self._state = "new"
        self.hlc: Hlc | None = None
        """The commit's HLC, once committed (None if nothing changed)."""
        self.records: tuple[UpdateRecord, ...] = ()
        """The records the commit wrote, one per changed document: ``(origin, seq)``
        names each everywhere (empty until committed, and if nothing changed)."""

    def __enter__(self) -> Transaction:
        if self._state != "new":
            raise TransactionError("a transaction can be entered once: start a new one")
        self._engine.begin(self._handles, join=self._one_shot)
        self._state = "open"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group = None
        try:
            if exc_type is None:
                committed = self._writer.commit(self._handles)
                if committed is not None:
                    self.hlc, records = committed
                    self.records = tuple(records)
                # Our commit's group, or the open one whose rows we may have read.
                group = self._engine.group
            else:
                self._writer.rollback(self._handles)
        finally:
            self._state = "done"
            self._engine.end(self._handles)
        if group is not None:  # returns after the group's COMMIT (see crdtdb.group)
            try:
                self._engine.await_group(group)
            except BaseException:
                self.hlc, self.records = None, ()
                raise

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
            validate_doc_id(doc_id)
            if not self._reserved and collection_of(doc_id) == RESERVED_COLLECTION:
                raise ReservedCollectionError(
                    f"{shown(doc_id)} is in the reserved collection {RESERVED_COLLECTION!r}"
                    " (the cluster's membership): change it with `crdtdb cluster add/remove`"
                    " or crdtdb.membership, not with ordinary writes"
                )
            handle = self._engine.handle(doc_id)
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
            view = self._views[doc_id] = DocRoot(self._handle(doc_id), self._guard)
        self._handles[doc_id].tombstone = False
        return view

    def text(self, doc_id: str, field: str) -> DocText:
        """The collaborative text ``field`` of a document, created if missing.

        Unlike ``doc[field] = pycrdt.Text()`` (a map-key write: of two regions
        creating it concurrently, one keeps its text and the other loses its
        typing), this text is a root-level shared type of the document, which
        Yjs merges by name: regions that create it concurrently and type into
        it all keep their characters. It reads as ``field`` in the document's
        JSON once it holds something (see the README's data model).
        """
        text: DocText = self._field(doc_id, field, "text")
        return text

    def array(self, doc_id: str, field: str) -> DocArray:
        """The list ``field`` of a document as a merged field (see :meth:`text`)."""
        array: DocArray = self._field(doc_id, field, "array")
        return array

    def map(self, doc_id: str, field: str) -> DocMap:
        """The map ``field`` of a document as a merged field (see :meth:`text`)."""
        mapping: DocMap = self._field(doc_id, field, "map")
        return mapping

    def _field(self, doc_id: str, field: str, kind: str) -> Any:
        if not isinstance(field, str) or not field:
            raise InvalidValueError(f"a field name is a non-empty str, not {shown(field)}")
        handle = self._handle(doc_id)
        marked = handle.fields().get(field)
        if marked is not None and marked != kind:
            raise UsageError(
                f"field {shown(field)} of {shown(doc_id)} is a merged {marked}, not a {kind}: use"
                f" tx.{marked}({shown(doc_id)}, {shown(field)})"
            )
        if marked is None:
            handle.mark_field(field, kind)
        if field in handle.root:  # the merged field replaces an ordinary one of its name
            del handle.root[field]
        handle.ensure_live = True
        handle.tombstone = False
        return from_crdt(handle.field(field, kind), self._guard)

    def get(self, doc_id: str) -> dict[str, Any] | None:
        """The document as this transaction sees it (its own edits included)."""
        handle = self._handle(doc_id)
        if handle.tombstone or not (handle.live or handle.ensure_live):
            return None
        result: dict[str, Any] = handle.json()
        return result

    def put(self, doc_id: str, value: Mapping[str, Any]) -> None:
        """Make the document equal to ``value`` (keys not in it are removed).

        A merged field (see :meth:`text`) stays one: its content is replaced.
        """
        converted = self._convert(value)
        handle = self._handle(doc_id)
        for name, shared in handle.shown_fields().items():
            if name not in value:
                shared.clear()
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
        fields = handle.fields()
        for key, item in converted.items():
            if key in fields:
                assign_field(handle, key, fields[key], value[key])
            elif (
                key not in current
                or current[key] != value[key]
                or _type_differs(current[key], value[key])
            ):
                handle.root[key] = item
        handle.ensure_live = True
        handle.tombstone = False


class DocRoot(DocMap):
    """A document's root as a transaction hands it out: its merged fields show as keys."""

    __slots__ = ("_handle",)

    def __init__(self, handle: DocHandle, guard: Callable[[], None]) -> None:
        super().__init__(handle.root, guard)
        self._handle = handle

    def __getitem__(self, key: str) -> Any:
        shared = self._handle.shown_fields().get(key)
        if shared is None:
            return super().__getitem__(key)
        self._guard()
        return from_crdt(shared, self._guard, self, key)

    def __setitem__(self, key: str, value: object) -> None:
        kind = self._handle.fields().get(key) if isinstance(key, str) else None
        if kind is None:
            super().__setitem__(key, value)
        elif not is_same_slot(value, self, key):  # ``doc[k] += "..."`` is done in place
            self._guard()
            assign_field(self._handle, key, kind, value)

    def __delitem__(self, key: str) -> None:
        shared = self._handle.shown_fields().get(key)
        if shared is None:
            super().__delitem__(key)
        else:
            self._guard()
            shared.clear()
            if key in self._map:
                del self._map[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_py())

    def __len__(self) -> int:
        return len(self.to_py())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or key in self._handle.shown_fields()

    def to_py(self) -> dict[str, Any]:
        self._guard()
        return self._handle.json()


def assign_field(handle: DocHandle, name: str, kind: str, value: object) -> None:
    """Make merged field ``name`` hold ``value``, editing only what differs."""
    shared = handle.field(name, kind)
    if name in handle.root:
        del handle.root[name]
    if value is None:  # empties it: a merged field is shown while it holds something
        shared.clear()
    elif kind == "text":
        if not isinstance(value, (str, Text, DocText)):
            raise InvalidValueError(f"field {shown(name)} is a merged text: give it a str")
        _replace_text(shared, (value.to_py() or "") if isinstance(value, Text) else str(value))
    elif kind == "array":
        if not isinstance(value, (list, tuple, DocArray)):
            raise InvalidValueError(f"field {shown(name)} is a merged array: give it a list")
        items = value.to_py() if isinstance(value, DocArray) else list(value)
        if read_json(shared) != items:
            converted = [to_crdt(item, f"$.{name}[{i}]") for i, item in enumerate(items)]
            shared.clear()
            shared.extend(converted)
    else:
        if not isinstance(value, (Mapping, DocMap)):
            raise InvalidValueError(f"field {shown(name)} is a merged map: give it a dict")
        entries = dict(value.items())
        current = read_json(shared)
        for key in [k for k in current if k not in entries]:
            del shared[key]
        for key, item in entries.items():
            if key not in current or current[key] != item or _type_differs(current[key], item):
                shared[key] = to_crdt(item, f"$.{name}.{key}")


def _replace_text(text: Text, new: str) -> None:
    """Edit ``text`` into ``new`` by one deletion and one insertion between what they share."""
    old = str(text)
    if old == new:
        return
    start = 0
    limit = min(len(old), len(new))
    while start < limit and old[start] == new[start]:
        start += 1
    end = 0
    while end < limit - start and old[-1 - end] == new[-1 - end]:
        end += 1
    at = len(old[:start].encode())  # pycrdt counts text positions in UTF-8 bytes
    removed = len(old[start : len(old) - end].encode())
    if removed:
        del text[at : at + removed]
    if len(new) - end > start:
        text.insert(at, new[start : len(new) - end])


def to_crdt_items(value: Mapping[str, Any]) -> list[tuple[str, Any]]:
    items = []
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidValueError(f"key {shown(key)} is not a str: JSON keys are text")
        items.append((key, item))
    return items


def _type_differs(a: object, b: object) -> bool:
    # True == 1 in Python, but a JSON bool is not a number.
    return isinstance(a, bool) != isinstance(b, bool)
