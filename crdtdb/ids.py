"""Validation of the names users and peers give us: document ids and regions.

A document id is ``collection/key``. The collection is a short identifier
(letters, digits, ``_ . -``); the key is any printable text without control
characters, up to 512 bytes of UTF-8, and may itself contain ``/``.
"""

from __future__ import annotations

import re
from typing import NewType

from .errors import InvalidDocIdError, InvalidRegionError, shown

__all__ = [
    "RESERVED_COLLECTION",
    "DocId",
    "RegionId",
    "collection_of",
    "validate_collection",
    "validate_doc_id",
    "validate_region",
]

DocId = NewType("DocId", str)
RegionId = NewType("RegionId", str)

MAX_KEY_BYTES = 512
RESERVED_COLLECTION = "_cluster"
"""The collection of the cluster's membership (:mod:`crdtdb.membership`): not user data."""
_COLLECTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
_REGION = re.compile(r"[a-z0-9][a-z0-9_\-]{0,31}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 (e.g. U+0085 NEL)


def validate_collection(name: object) -> str:
    if not isinstance(name, str) or not _COLLECTION.fullmatch(name):
        raise InvalidDocIdError(
            f"invalid collection {shown(name)}: use 1-64 characters of letters, digits, '_', '.'"
            " or '-', not starting with '.' or '-'"
        )
    return name


def validate_doc_id(doc_id: object) -> DocId:
    """Return ``doc_id`` if it is a well-formed ``collection/key``, else raise."""
    if not isinstance(doc_id, str):
        raise InvalidDocIdError(
            f"document id must be a str like 'users/alice', got {type(doc_id).__name__}"
        )
    collection, sep, key = doc_id.partition("/")
    if not sep or not key:
        raise InvalidDocIdError(
            f"invalid document id {shown(doc_id)}: write it as 'collection/key', e.g. 'users/alice'"
        )
    validate_collection(collection)
    if _CONTROL.search(key) or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidDocIdError(
            f"invalid key in document id {shown(doc_id)}: at most {MAX_KEY_BYTES} bytes of UTF-8"
            " with no control characters"
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidDocIdError(f"document id {shown(doc_id)} is not valid Unicode text") from None
    return DocId(doc_id)


def collection_of(doc_id: str) -> str:
    return doc_id.partition("/")[0]


def validate_region(region: object) -> RegionId:
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise InvalidRegionError(
            f"invalid region name {shown(region)}: use 1-32 lowercase letters, digits, '_' or '-',"
            " starting with a letter or digit (e.g. 'eu', 'us-east')"
        )
    return RegionId(region)
