"""Hypothesis strategies and the HLC rule in integer form, for test_hlc*.py."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st

from crdtdb.hlc import MAX_LOGICAL, Hlc

__all__ = ["BASE_MS", "MAX_HLC", "PROPERTY", "hlcs", "logicals", "near_hlcs", "oracle"]

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MAX_HLC = (1 << 64) - 1

# Logical counters that matter: zero, small, and the ones that force a borrow.
logicals = st.one_of(
    st.sampled_from([0, 1, MAX_LOGICAL - 1, MAX_LOGICAL]),
    st.integers(0, MAX_LOGICAL),
)
hlcs = st.builds(Hlc, st.integers(0, MAX_HLC))
# Walls in a narrow window around BASE_MS, so that equal walls (and so logical
# increments and overflow borrows) are common.
near_walls = st.integers(BASE_MS - 50, BASE_MS + 50)
near_hlcs = st.builds(Hlc.from_parts, near_walls, logicals)

PROPERTY = settings(max_examples=100, deadline=None)


def oracle(*candidates: int) -> int:
    """The HLC rule in integer form: the largest candidate.

    A new local event gets ``max(last + 1, wall << 16)``; receiving ``remote``
    gets ``max(last + 1, remote + 1, wall << 16)``. Adding 1 to an HLC whose
    logical counter is 0xFFFF carries into the wall part, which is exactly the
    "borrow a millisecond" rule.
    """
    return max(candidates)
