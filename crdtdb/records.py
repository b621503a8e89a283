"""The unit of replication: one document update, tagged with where and when it was made."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InvalidRecordError, shown
from .hlc import Hlc
from .ids import validate_doc_id, validate_region

__all__ = ["REPAIR", "UNCHECKED", "WRITE", "UpdateRecord"]

MAX_SQLITE_INT = (1 << 63) - 1

# What a record's items are (``UpdateRecord.kind``):
WRITE = 0
"""An edit its origin made: every item in it was authored by the origin, under Yjs
client ids that only that origin writes with (checked on apply, see ``clients``)."""
REPAIR = 1
"""An anti-entropy repair committed by its origin: it carries items other regions
authored (a state-vector diff), so its client ids say nothing about its origin."""
UNCHECKED = 2
"""Written before stores recorded kinds (schema 2 and older): not checked."""
KINDS = (WRITE, REPAIR, UNCHECKED)


@dataclass(frozen=True, slots=True)
class UpdateRecord:
    """One committed CRDT update of one document.

    ``origin`` is the region that made the edit and ``seq`` its position in
    that region's contiguous sequence; ``(origin, seq)`` identifies the record
    everywhere, which is what makes applying it idempotent. All records of one
    transaction share its ``hlc``.
    """

    doc_id: str
    hlc: Hlc
    origin: str
    seq: int
    update: bytes
    kind: int = WRITE
    """``WRITE``, ``REPAIR`` or ``UNCHECKED``: whose items the update carries."""
    _checked: bool = field(default=False, init=False, repr=False, compare=False)
    """Whether :meth:`validated` passed already (the fields are frozen, so it still holds)."""

    def validated(self) -> UpdateRecord:
        """Check every field's type and range (for records from elsewhere); return self.

        A record checked once (say by the wire decoder) is not checked again (say
        by ``apply_remote_many``): receiving spent 8% of its time checking twice.
        """
        if self._checked:
            return self
        try:
            validate_doc_id(self.doc_id)
            validate_region(self.origin)
        except ValueError as exc:
            raise InvalidRecordError(f"refused record: {exc}") from None
        if (
            isinstance(self.seq, bool)
            or not isinstance(self.seq, int)
            or not (0 < self.seq <= MAX_SQLITE_INT)
        ):
            raise InvalidRecordError(
                f"refused record: seq must be a positive int, got {shown(self.seq)}"
            )
        if (
            isinstance(self.hlc, bool)
            or not isinstance(self.hlc, int)
            or not (0 < self.hlc <= MAX_SQLITE_INT)
        ):
            raise InvalidRecordError(f"refused record: hlc out of range: {shown(self.hlc)}")
        if not isinstance(self.update, bytes) or not self.update:
            raise InvalidRecordError("refused record: update must be non-empty bytes")
        if self.kind not in KINDS or isinstance(self.kind, bool):
            raise InvalidRecordError(
                f"refused record: unknown record kind {shown(self.kind)}"
                " (0 write, 1 repair, 2 unchecked)"
            )
        object.__setattr__(self, "_checked", True)
        return self
