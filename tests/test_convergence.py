"""Convergence: regions that receive the same records, in any order, end identical.

A hypothesis state machine drives three real region stores (SQLite files in a
temporary directory): random edits in every region (puts, merges, nested
edits, text edits, deletes, multi-document transactions), interleaved with
partial, reordered and duplicated deliveries of log records between regions.
Whatever happened, once every region has every record, all regions hold the
same documents, the same digests and the same Merkle root.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import crdtdb
from crdtdb import UpdateRecord

REGIONS = ("eu", "us", "ap")
DOCS = ("users/a", "users/b", "orders/1")
KEYS = ("x", "y", "tags", "body")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=5),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=6,
)


class Regions(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="crdtdb-conv-"))
        self.dbs: dict[str, crdtdb.Database] = {}
        self.sent: dict[str, list[UpdateRecord]] = {}

    @initialize()
    def open_regions(self) -> None:
        for region in REGIONS:
            self.dbs[region] = crdtdb.open(self.tmp / region, region=region, cache_size=2)

    def teardown(self) -> None:
        for db in self.dbs.values():
            db.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(
        region=st.sampled_from(REGIONS),
        doc=st.sampled_from(DOCS),
        value=st.dictionaries(st.sampled_from(KEYS), values, max_size=3),
    )
    def put(self, region: str, doc: str, value: dict[str, Any]) -> None:
        self.dbs[region].put(doc, value)

    @rule(
        region=st.sampled_from(REGIONS),
        doc=st.sampled_from(DOCS),
        key=st.sampled_from(KEYS),
        value=values,
    )
    def update(self, region: str, doc: str, key: str, value: Any) -> None:
        self.dbs[region].update(doc, {key: value})

    @rule(region=st.sampled_from(REGIONS), doc=st.sampled_from(DOCS))
    def delete(self, region: str, doc: str) -> None:
        self.dbs[region].delete(doc)

    @rule(
        region=st.sampled_from(REGIONS),
        doc=st.sampled_from(DOCS),
        item=scalars,
        position=st.integers(0, 5),
    )
    def nested_edit(self, region: str, doc: str, item: Any, position: int) -> None:
        with self.dbs[region].transaction() as tx:
            root = tx.doc(doc)
            tags = root.get("tags")
            if isinstance(tags, crdtdb.DocArray):
                tags.insert(position, item)
            else:
                root["tags"] = [item]

    @rule(
        region=st.sampled_from(REGIONS),
        doc=st.sampled_from(DOCS),
        text=st.text(alphabet="abc ", min_size=1, max_size=4),
        position=st.integers(0, 8),
    )
    def type_text(self, region: str, doc: str, text: str, position: int) -> None:
        with self.dbs[region].transaction() as tx:
            root = tx.doc(doc)
            body = root.get("body")
            if isinstance(body, crdtdb.DocText):
                body.insert(min(position, len(body)), text)
            else:
                from pycrdt import Text

                root["body"] = Text(text)

    @rule(
        region=st.sampled_from(REGIONS),
        doc=st.sampled_from(DOCS),
        text=st.text(alphabet="xyz", min_size=1, max_size=3),
        position=st.integers(0, 8),
        cut=st.integers(0, 2),
    )
    def type_merged(self, region: str, doc: str, text: str, position: int, cut: int) -> None:
        """A merged text and list (puts and deletes empty them; edits elsewhere survive)."""
        with self.dbs[region].transaction() as tx:
            body = tx.text(doc, "note")
            if cut and len(body) > cut:
                del body[position % len(body) : position % len(body) + 1]
            body.insert(min(position, len(body)), text)
            tx.array(doc, "items").append(text)

    @rule(
        region=st.sampled_from(REGIONS),
        docs=st.lists(st.sampled_from(DOCS), min_size=2, max_size=3, unique=True),
    )
    def multi_doc_transaction(self, region: str, docs: list[str]) -> None:
        with self.dbs[region].transaction() as tx:
            for i, doc in enumerate(docs):
                tx.update(doc, {"x": i})

    @rule(sender=st.sampled_from(REGIONS), receiver=st.sampled_from(REGIONS), data=st.data())
    def deliver_some(self, sender: str, receiver: str, data: st.DataObject) -> None:
        """A partial delivery: any subset of the source's records, in any order, duplicated."""
        records = list(self.dbs[sender].changes())
        if not records:
            return
        chosen = data.draw(st.lists(st.sampled_from(records), max_size=len(records) + 2))
        for record in chosen:
            self.dbs[receiver].apply_remote(record)

    @invariant()
    def sequences_stay_contiguous(self) -> None:
        for region, db in self.dbs.items():
            own = [r.seq for r in db.changes() if r.origin == region]
            assert sorted(own) == list(range(1, len(own) + 1))

    def heal(self) -> None:
        """Everyone sends everything to everyone (twice: relays must be idempotent)."""
        for _ in range(2):
            for source in REGIONS:
                for target in REGIONS:
                    if source != target:
                        for record in self.dbs[source].changes():
                            self.dbs[target].apply_remote(record)

    @rule()
    def heal_and_check(self) -> None:
        self.heal()
        views = {region: {doc: db.get(doc) for doc in DOCS} for region, db in self.dbs.items()}
        assert views["eu"] == views["us"] == views["ap"], views
        for doc in DOCS:
            digests = {db.digest(doc) for db in self.dbs.values()}
            assert len(digests) == 1, (doc, digests)
        roots = {db.merkle_root() for db in self.dbs.values()}
        assert len(roots) == 1
        logs = [sorted((r.origin, r.seq) for r in db.changes()) for db in self.dbs.values()]
        assert logs[0] == logs[1] == logs[2]


Regions.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestConvergence = Regions.TestCase
