"""Document digests and the fixed-shape Merkle tree used by anti-entropy.

A document's digest covers its state vector *and* its delete set (what
``doc.get_update(sv)`` encodes when ``sv`` is the doc's own state): the state
vector alone misses delete-only divergence. Yrs writes both as lists keyed by
client id in hash-map order, which differs between replicas holding the same
updates, so both are decoded and re-encoded sorted by client before hashing:
replicas holding the same updates in any order have identical digests.

The tree has a fixed fanout of 16 and depth 4 (65,536 leaves). A document
lands in the leaf given by the first 16 bits of ``sha256(doc_id)``. Every node
is the XOR of ``sha256(doc_id, digest)`` over the documents below it. XOR makes
maintenance incremental and order-free: when a document's digest changes, the
same delta is XORed into its leaf and each ancestor, ``DEPTH + 1`` updates per
changed document, never a rebuild.

Node numbers: ``(level << 16) | index``; level 0 is the root (index 0), level
``DEPTH`` the leaves.

Anti-entropy may also descend four ways instead of sixteen where few nodes
differ: a node's sixteen children split into four *quads* of four, and a quad's
hash is the XOR of its four children's, computed when asked, never stored.
Quad numbers: ``QUAD | (level << 16) | (index * 4 + q)`` for quad ``q`` of node
``(level, index)``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pycrdt import Doc

from .yjs import decode_state_vector, read_pairs, read_varuint, write_varuint

__all__ = [
    "DEPTH",
    "FANOUT",
    "NODE_BYTES",
    "QUAD",
    "canonical_state",
    "children",
    "contribution",
    "delete_set_digest",
    "doc_digest",
    "is_leaf",
    "leaf_of",
    "node_id",
    "path_to_root",
    "quad_children",
    "quads",
    "state_vector_clocks",
    "xor_bytes",
]

FANOUT_BITS = 4
FANOUT = 1 << FANOUT_BITS
DEPTH = 4
NODE_BYTES = 32
ZERO = bytes(NODE_BYTES)
QUAD = 1 << 20
"""Flag bit of a quad's number (see the module docstring)."""


def doc_digest(doc: Doc[Any]) -> bytes:
    """The canonical digest of a document's full CRDT state (inserts and deletes)."""
    state = doc.get_state()
    return hashlib.sha256(canonical_state(state, doc.get_update(state))).digest()


def canonical_state(state_vector: bytes, delete_update: bytes) -> bytes:
    """State vector and delete set, each sorted by client id, as one byte string."""
    if _count(state_vector, 0) <= 1 and _count(delete_update, _skip(delete_update, 0)) <= 1:
        return state_vector + delete_update  # one client: already in canonical order
    clocks, end = read_pairs(state_vector, 0)
    if end != len(state_vector):
        return state_vector + b"\xff" + delete_update
    struct_groups, pos = read_varuint(delete_update, 0)
    if struct_groups != 0:  # not a pure delete set: hash it as it is
        return state_vector + b"\xff" + delete_update
    count, pos = read_varuint(delete_update, pos)
    deletes = []
    for _ in range(count):
        client, pos = read_varuint(delete_update, pos)
        ranges, pos = read_pairs(delete_update, pos)
        deletes.append((client, _merged(ranges)))
    out = bytearray()
    write_varuint(out, len(clocks))
    for client, clock in sorted(clocks):
        write_varuint(out, client)
        write_varuint(out, clock)
    write_varuint(out, len(deletes))
    for client, ranges in sorted(deletes):
        write_varuint(out, client)
        write_varuint(out, len(ranges))
        for start, length in ranges:
            write_varuint(out, start)
            write_varuint(out, length)
    return bytes(out)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(clock, length) ranges sorted, with touching or overlapping ones joined."""
    out: list[tuple[int, int]] = []
    for start, length in sorted(ranges):
        if out and start <= out[-1][0] + out[-1][1]:
            first, first_length = out[-1]
            out[-1] = (first, max(first_length, start + length - first))
        else:
            out.append((start, length))
    return out


def _count(data: bytes, pos: int) -> int:
    return read_varuint(data, pos)[0] if pos < len(data) else 0


def _skip(data: bytes, pos: int) -> int:
    """Position after the varuint at ``pos`` (the struct-group count of an update)."""
    while pos < len(data) and data[pos] >= 0x80:
        pos += 1
    return pos + 1


def leaf_of(doc_id: str) -> int:
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:2], "big") >> (16 - FANOUT_BITS * DEPTH)


def contribution(doc_id: str, digest: bytes) -> bytes:
    """What one document XORs into its leaf and ancestors."""
    return hashlib.sha256(doc_id.encode("utf-8") + b"\x00" + digest).digest()


def node_id(level: int, index: int) -> int:
    return (level << 16) | index


def path_to_root(leaf: int) -> list[int]:
    """Node ids from the leaf up to the root."""
    return [
        node_id(level, leaf >> (FANOUT_BITS * (DEPTH - level))) for level in range(DEPTH, -1, -1)
    ]


def children(node: int) -> list[int]:
    level, index = node >> 16, node & 0xFFFF
    if level >= DEPTH:
        return []
    first = index << FANOUT_BITS
    return [node_id(level + 1, first + i) for i in range(FANOUT)]


def valid_node(node: int) -> bool:
    """Whether ``node`` names a node of the tree (its index fits its level), or a quad of one."""
    if node & QUAD:
        level, index = (node ^ QUAD) >> 16, node & 0xFFFF
        return level < DEPTH and index < 4 * FANOUT**level
    level, index = node >> 16, node & 0xFFFF
    return 0 <= level <= DEPTH and index < FANOUT**level


def is_leaf(node: int) -> bool:
    return not node & QUAD and node >> 16 == DEPTH


def quads(node: int) -> list[int]:
    """The four quads of a node above the leaves (``[]`` for a leaf)."""
    level, index = node >> 16, node & 0xFFFF
    if node & QUAD or level >= DEPTH:
        return []
    return [QUAD | (level << 16) | (index * 4 + q) for q in range(4)]


def quad_children(quad: int) -> list[int]:
    """The four nodes (one level down) whose hashes XOR to the quad's."""
    level, index = (quad ^ QUAD) >> 16, quad & 0xFFFF
    return [node_id(level + 1, index * 4 + i) for i in range(4)]


def state_vector_clocks(state_vector: bytes) -> dict[int, int]:
    """``{client: clock}`` of an encoded state vector; ValueError if it does not decode."""
    return dict(decode_state_vector(state_vector))


def delete_set_digest(delete_update: bytes) -> bytes:
    """Digest of the delete set in ``delete_update`` (an update from ``get_update(own state)``)."""
    return hashlib.sha256(canonical_state(b"\x00", delete_update)).digest()


def xor_bytes(a: bytes | None, b: bytes | None) -> bytes:
    """XOR of two node hashes; ``None`` counts as all zeros (an empty subtree)."""
    left = int.from_bytes(a or ZERO, "big")
    right = int.from_bytes(b or ZERO, "big")
    return (left ^ right).to_bytes(NODE_BYTES, "big")
