"""JSON-like values in and out of pycrdt, and the live views a transaction hands out.

Going in, ``dict`` becomes a CRDT ``Map``, ``list`` a CRDT ``Array`` (so nested
edits merge key by key and element by element), :class:`pycrdt.Text` stays a
collaborative text, and scalars (``None``, ``bool``, ``int``, finite
``float``, ``str``) are stored as atomic values: two regions setting the same
key concurrently keep one of the two values, the same one everywhere.

Reading a text inside a transaction gives a :class:`DocText`; ``doc["body"] +=
"more"`` and ``doc["body"].insert(i, "x")`` are character-level CRDT edits.

Coming out, Yjs hands integers back as floats; a float with no fractional part
that fits in a signed 64-bit integer is returned as ``int`` (as Yrs' own JSON
encoder does), so that ``{"age": 31}`` reads back as written. Integers must
fit in a signed 64-bit integer. Whole documents are read through Yrs' JSON
encoder (:func:`read_json`), which is ~50x faster than walking them from Python.

A document may arrive nesting deeper than :data:`MAX_DEPTH` (a peer, or pycrdt
used directly, need not check it). Parsing its JSON, and what is built from it
(shapes, canonical JSON), recurses once a level: where Python's recursion limit
is reached, readers raise :class:`~crdtdb.errors.DocumentTooDeepError` (see
:func:`too_deep`) rather than let a RecursionError out. Catching it costs
nothing on the usual path, where measuring each document's depth first cost up
to 4x a parse (12 KB of small objects: 155 -> 646 µs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, MutableMapping, MutableSequence
from typing import Any, TypeAlias, overload

from pycrdt import Array, Map, Text

from .errors import (
    SHOWN_CHARS,
    DocumentTooDeepError,
    InvalidValueError,
    TransactionError,
    shown,
)

__all__ = [
    "DocArray",
    "DocMap",
    "DocText",
    "JsonValue",
    "from_crdt",
    "is_same_slot",
    "load_json",
    "normalize",
    "plain",
    "read_json",
    "to_crdt",
    "too_deep",
]

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
MAX_DEPTH = 100
"""How many levels of dicts and lists one value written may nest."""
_FLOAT_INT_MIN, _FLOAT_INT_MAX = -float(1 << 63), float(1 << 63)


def _at(path: str) -> str:
    """Where in a value something is wrong, cut short: keys come from the caller."""
    return path if len(path) <= SHOWN_CHARS else f"{path[:SHOWN_CHARS]}..."


def to_crdt(value: object, path: str = "$", depth: int = 0) -> Any:
    """Validate a JSON-like value and convert it to what pycrdt stores."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidValueError(
                f"integer at {_at(path)} does not fit in 64 bits: store it as a str"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValueError(
                f"{value} at {_at(path)} is not a JSON number: use null or a str"
            )
        return value
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        # Deeper values (or a dict that contains itself) would overflow Python's stack here,
        # in pycrdt and in every reader; no JSON document needs them.
        raise InvalidValueError(
            f"value at {_at(path)} nests more than {MAX_DEPTH} levels deep: flatten it"
        )
    if isinstance(value, dict):
        items = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidValueError(
                    f"key {shown(key)} at {_at(path)} is not a str: JSON keys are text"
                )
            items[key] = to_crdt(item, f"{path}.{key}", depth + 1)
        return Map(items)
    if isinstance(value, (list, tuple)):
        return Array([to_crdt(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)])
    if isinstance(value, Text):
        if value.is_integrated:
            return Text(str(value))
        return value
    if isinstance(value, (DocMap, DocArray)):
        return to_crdt(value.to_py(), path)
    if isinstance(value, DocText):
        return Text(str(value))
    raise InvalidValueError(
        f"{type(value).__name__} at {_at(path)} is not JSON-like: use dict, list, str, int, float,"
        " bool, None or pycrdt.Text"
    )


def normalize(value: Any) -> Any:
    """Turn pycrdt's ``to_py`` output into plain JSON values (integral floats -> int)."""
    if isinstance(value, float):
        if value.is_integer() and _FLOAT_INT_MIN <= value < _FLOAT_INT_MAX:
            return int(value)
        return value
    if isinstance(value, dict):
        return {key: normalize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [normalize(item) for item in value]
    return value


def read_json(shared: Map[Any] | Array[Any]) -> Any:
    """A shared map or array as plain JSON values, encoded by Yrs itself."""
    return load_json(str(shared))


def load_json(text: str) -> Any:
    """JSON text Yrs wrote for a document (or part), parsed; a document nested too deeply
    for Python to parse is refused with :class:`DocumentTooDeepError`."""
    try:
        return json.loads(text)
    except RecursionError:
        raise too_deep() from None


def too_deep() -> DocumentTooDeepError:
    """The error for a document that nests too deeply to be read as a whole."""
    return DocumentTooDeepError(
        "a document nests too deeply to be read as JSON (deeper than Python's recursion"
        f" limit; crdtdb writes stop at {MAX_DEPTH} levels, so it was made elsewhere): flatten"
        " or delete its deepest field in a db.transaction(), through tx.doc(doc_id)"
    )


def plain(value: Any) -> Any:
    """Any value read from a document as plain JSON (texts as ``str``)."""
    if isinstance(value, (Map, Array)):
        return read_json(value)
    if isinstance(value, Text):
        return str(value)
    return normalize(value)


Guard = Callable[[], None]
"""Raises if the transaction a view belongs to has ended."""


def from_crdt(
    value: Any, guard: Guard, owner: object = None, key: object = None, depth: int = 1
) -> Any:
    """Wrap a value read from a live document for the user (``depth``: how many maps and
    arrays hold it, itself included, below the document's own map)."""
    if isinstance(value, Map):
        return DocMap(value, guard, depth)
    if isinstance(value, Array):
        return DocArray(value, guard, depth)
    if isinstance(value, Text):
        return DocText(value, guard, owner, key)
    return normalize(value)


def is_same_slot(value: object, owner: object, key: object) -> bool:
    """True for ``doc[k] += "..."``: the text just appended to in place is stored back.

    Python runs ``doc[k] += s`` as ``t = doc[k]; t = t.__iadd__(s); doc[k] = t``;
    that last store must not replace the text by a copy (concurrent edits to it
    would be lost). Any other store of a text is a real assignment.
    """
    if isinstance(value, DocText) and value._appended and value._owner is owner:
        value._appended = False
        return bool(value._key == key)
    return False


class DocText:
    """A live collaborative text inside a transaction; edits merge character by character."""

    __slots__ = ("_appended", "_guard", "_key", "_owner", "text")

    def __init__(self, text: Text, guard: Guard, owner: object = None, key: object = None) -> None:
        self.text = text
        """The underlying :class:`pycrdt.Text`, for formatting and other advanced edits."""
        self._guard = guard
        self._owner = owner
        self._key = key
        self._appended = False

    def __str__(self) -> str:
        self._guard()
        return str(self.text)

    def __len__(self) -> int:
        self._guard()
        return len(str(self.text))

    def __eq__(self, other: object) -> bool:
        return str(self) == (str(other) if isinstance(other, DocText) else other)

    __hash__ = None  # type: ignore[assignment]

    # Positions are characters (code points), as in Python's str. pycrdt 0.14 counts
    # UTF-8 bytes, and a byte offset inside a multi-byte character silently put the
    # insert at the end of the text ("héllo".insert(2, "x") gave "héllox").

    def insert(self, index: int, value: str) -> None:
        """Insert ``value`` before position ``index`` (clamped to the text, as ``list.insert``)."""
        self._guard()
        value = _str(value)
        chars = str(self.text)
        self.text.insert(_utf8_offset(chars, _insert_at(index, len(chars))), value)

    def __iadd__(self, value: str) -> DocText:
        self._guard()
        self.text += _str(value)
        self._appended = True
        return self

    def __delitem__(self, index: int | slice) -> None:
        self._guard()
        chars = str(self.text)
        start, stop, _ = _span(index, len(chars), "text", steps=False)
        if stop > start:
            del self.text[_utf8_offset(chars, start) : _utf8_offset(chars, stop)]

    def __setitem__(self, index: int | slice, value: str) -> None:
        self._guard()
        value = _str(value)
        if not isinstance(index, slice) and len(value) != 1:
            raise InvalidValueError("text[i] = s takes one character: replace a slice instead")
        chars = str(self.text)
        start, stop, _ = _span(index, len(chars), "text", steps=False)
        self.text[_utf8_offset(chars, start) : _utf8_offset(chars, stop)] = value

    def to_py(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        try:
            return f"DocText({str(self)!r})"
        except TransactionError:
            return "DocText(<transaction ended>)"


class DocMap(MutableMapping[str, Any]):
    """A live CRDT map inside a transaction; edits become CRDT operations."""

    __slots__ = ("_depth", "_guard", "_map")

    def __init__(self, crdt_map: Map[Any], guard: Guard, depth: int = 0) -> None:
        self._map = crdt_map
        self._guard = guard
        self._depth = depth  # values set here nest under as many levels (MAX_DEPTH holds)

    def __getitem__(self, key: str) -> Any:
        self._guard()
        if not isinstance(key, str):  # not there, as in a dict: doc.get(5) is None
            raise KeyError(key)
        return from_crdt(self._map[key], self._guard, self, key, self._depth + 1)

    def __setitem__(self, key: str, value: object) -> None:
        self._guard()
        if not isinstance(key, str):
            raise InvalidValueError(f"key {shown(key)} is not a str: JSON keys are text")
        kind = type(value)
        if (
            kind is str
            or kind is bool
            or value is None
            or (
                kind is int and _INT_MIN <= value <= _INT_MAX  # type: ignore[operator]
            )
        ):
            self._map[key] = value  # the common case, checked inline (a hot path)
        elif not is_same_slot(value, self, key):
            self._map[key] = to_crdt(value, f"$.{key}", self._depth)

    def __delitem__(self, key: str) -> None:
        self._guard()
        if not isinstance(key, str):
            raise KeyError(key)
        del self._map[key]

    def __iter__(self) -> Iterator[str]:
        self._guard()
        return iter(list(self._map.keys()))

    def __len__(self) -> int:
        self._guard()
        return len(self._map)

    def __contains__(self, key: object) -> bool:
        self._guard()
        return isinstance(key, str) and key in self._map

    def to_py(self) -> dict[str, Any]:
        """A plain ``dict`` copy of the current value."""
        self._guard()
        result: dict[str, Any] = read_json(self._map)
        return result

    def __repr__(self) -> str:
        try:
            return f"DocMap({self.to_py()!r})"
        except TransactionError:
            return "DocMap(<transaction ended>)"


class DocArray(MutableSequence[Any]):
    """A live CRDT array inside a transaction; edits become CRDT operations."""

    __slots__ = ("_array", "_depth", "_guard")

    def __init__(self, crdt_array: Array[Any], guard: Guard, depth: int = 1) -> None:
        self._array = crdt_array
        self._guard = guard
        self._depth = depth  # values set here nest under as many levels (MAX_DEPTH holds)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        self._guard()
        start, stop, step = _span(index, len(self._array), "array")
        if not isinstance(index, slice):
            return from_crdt(self._array[start], self._guard, self, index, self._depth + 1)
        if step == 1:
            items = self._array[start:stop] if stop > start else []
        else:
            items = [self._array[i] for i in range(start, stop, step)]
        return [from_crdt(item, self._guard, depth=self._depth + 1) for item in items]

    def __setitem__(self, index: Any, value: Any) -> None:
        self._guard()
        if isinstance(index, slice):
            raise InvalidValueError("slice assignment is not supported: delete then insert")
        position = _span(index, len(self._array), "array")[0]
        if is_same_slot(value, self, index):
            return
        self._array[position] = to_crdt(value, f"$[{position}]", self._depth)

    def __delitem__(self, index: int | slice) -> None:
        self._guard()
        start, stop, step = _span(index, len(self._array), "array")
        if step == 1:
            if stop > start:
                del self._array[start:stop]
            return
        for position in sorted(range(start, stop, step), reverse=True):
            del self._array[position]

    def __len__(self) -> int:
        self._guard()
        return len(self._array)

    def insert(self, index: int, value: object) -> None:
        self._guard()
        position = _insert_at(index, len(self._array))
        self._array.insert(position, to_crdt(value, f"$[{position}]", self._depth))

    def append(self, value: object) -> None:
        self._guard()
        self._array.append(to_crdt(value, f"$[{len(self._array)}]", self._depth))

    def extend(self, values: Any) -> None:
        self._guard()
        self._array.extend([to_crdt(v, f"$[+{i}]", self._depth) for i, v in enumerate(values)])

    def to_py(self) -> list[Any]:
        self._guard()
        result: list[Any] = read_json(self._array)
        return result

    def __repr__(self) -> str:
        try:
            return f"DocArray({self.to_py()!r})"
        except TransactionError:
            return "DocArray(<transaction ended>)"


# Positions in live views, checked as Python's own sequences check them: a bad type is an
# InvalidValueError (a TypeError), a position outside is an IndexError (what iteration and
# the Sequence protocol rely on), never a panic of the Rust library below.


def _position(index: object, what: str, kinds: str = "ints or slices") -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise InvalidValueError(f"{what} positions are {kinds}, not {shown(index)}")
    return index


def _insert_at(index: object, length: int) -> int:
    position = _position(index, "insert", "ints")
    return max(0, length + position) if position < 0 else min(position, length)


def _span(index: object, length: int, what: str, *, steps: bool = True) -> tuple[int, int, int]:
    """(start, stop, step) of ``index``, a position (one item) or a slice, within ``length``."""
    if isinstance(index, slice):
        if not steps and index.step not in (None, 1):
            raise InvalidValueError(f"{what} slices take no step")
        for bound in (index.start, index.stop, index.step):
            if bound is not None:
                _position(bound, what)
        if index.step == 0:
            raise InvalidValueError(f"{what} slices take a step other than 0")
        start, stop, step = index.indices(length)
        return start, stop, step
    position = _position(index, what)
    if position < 0:
        position += length
    if not 0 <= position < length:
        raise IndexError(f"{what} index out of range")
    return position, position + 1, 1


def _utf8_offset(chars: str, position: int) -> int:
    """The UTF-8 byte offset pycrdt's Text takes for character ``position`` of ``chars``."""
    return len(chars[:position].encode("utf-8"))


def _str(value: object) -> str:
    if isinstance(value, DocText):
        return str(value)
    if not isinstance(value, str):
        raise InvalidValueError(f"a text takes str, not {type(value).__name__}")
    return value
