"""Forged and equivocating records from a certified region, over QUIC, against a real "us".

The attacker holds ap's real certificate and key: it authenticates as ap, as
any cluster member can, and relays records that claim to be eu's. What it
tries (issue 13): eu's next record with its own content; a record with an
``(origin, seq)`` us already holds and other content (made up by the relay,
and signed by eu itself: equivocation); a bad signature; a truncated chain.
Each time nothing is applied, the refusal names its reason, evidence is kept
where the brief says, and eu's real record still arrives as eu's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

import crdtdb
from crdtdb.records import UpdateRecord
from crdtdb.sync import wire
from crdtdb.sync.signing import record_bytes
from crdtdb.sync.status import evidence_line

from .harness.wait import wait_for
from .hostile_client import HostileProtocol, hostile_connection
from .hostile_scenarios import (
    LOGGER,
    SCENARIO_TIMEOUT,
    Us,
    assert_eu_replicates,
    assert_refusal_logged,
    authenticate_as,
    eu_record,
    running_us,
    sealed,
    snapshot,
)

pytestmark = pytest.mark.integration


def run(tmp_path: Path, certs: Path, attack: Callable[[Us], Awaitable[None]]) -> None:
    async def scenario() -> None:
        # ap is a member, as in the finding: a certified region of the cluster
        members = ("eu", "ap")
        async with asyncio.timeout(SCENARIO_TIMEOUT), running_us(tmp_path, certs, members) as us:
            await attack(us)

    asyncio.run(scenario())


def eu_writes(tmp: Path, *doc_ids: str) -> list[UpdateRecord]:
    """eu's real records: written in the store the real eu daemon runs on later."""
    with crdtdb.open(tmp / "eu", region="eu") as eu:
        for doc_id in doc_ids:
            eu.put(doc_id, {"by": "eu", "doc": doc_id})
        return eu.records_from("eu", 0)


async def send_as_ap(us: Us, *messages: wire.Message) -> HostileProtocol:
    """Connect as ap (its real certificate), send ``messages``; the connection stays open."""
    manager = hostile_connection(us.port, us.ca)
    client = await manager.__aenter__()
    client.manager = manager  # type: ignore[attr-defined]
    await authenticate_as(client, us.certs, "ap")
    for message in messages:
        client.send(message)
    return client


async def refused(us: Us, code: str, *messages: wire.Message) -> wire.Error:
    client = await send_as_ap(us, *messages)
    try:
        return await client.expect_refusal(code)
    finally:
        await client.manager.__aexit__(None, None, None)  # type: ignore[attr-defined]


async def real_eu_arrives_as_itself(us: Us) -> None:
    """The real eu connects; what us then holds as eu's records is exactly eu's log."""
    await assert_eu_replicates(us)  # eu writes users/from-eu, us writes users/from-us
    with crdtdb.open(us.tmp / "eu") as eu:
        real = eu.records_from("eu", 0)
    await wait_for(lambda: len(us.db.records_from("eu", 0)) == len(real), 10)
    held = us.db.records_from("eu", 0)
    assert [record_bytes(r) for r in held] == [record_bytes(r) for r in real]
    assert any(r.doc_id == "users/from-eu" for r in held), "eu's record came only as a repair"


def conflicts(us: Us) -> list[tuple[str, int, str, str]]:
    return [(c.origin, c.seq, c.kind, c.peer) for c in us.db.chains.conflicts()]


# ------------------------------------------- eu's next record, made up by ap


@pytest.mark.parametrize("how", ["ap-key", "eu-key-claimed", "unsigned"])
def test_a_region_cannot_forge_another_regions_next_record(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    forged = eu_record(tmp_path)  # eu#1 with ap's content of choice

    async def attack(us: Us) -> None:
        before = snapshot(us.db)
        if how == "unsigned":
            messages: tuple[wire.Message, ...] = (wire.Records((forged,)),)
            code, reason = "unsigned_record", "no seal of eu covers it"
        elif how == "ap-key":
            messages = sealed([forged], certs, "ap")
            code, reason = "bad_record_signature", "sealed with ap's key, not eu's"
        else:  # names eu's key (its certificate is public), but ap made the signature
            eu_cert, records = sealed([forged], certs, "eu")
            _, by_ap = sealed([forged], certs, "ap")
            seal = replace(records.seals[0], signature=by_ap.seals[0].signature)
            messages = (eu_cert, wire.Records(records.records, (seal,)))
            code, reason = "bad_record_signature", "does not verify with eu's key"
        error = await refused(us, code, *messages)
        assert reason in error.message
        await assert_refusal_logged(caplog, "ap", f"{code}: ", reason)
        assert snapshot(us.db) == before
        assert us.db.get("users/evil") is None
        expected = [] if how == "unsigned" else [("eu", 1, "forgery", "ap")]
        assert conflicts(us) == expected
        await real_eu_arrives_as_itself(us)

    run(tmp_path, certs, attack)


# ------------------------------------- a held (origin, seq) with other content


@pytest.mark.parametrize("signer", ["ap", "eu"])
def test_other_content_for_a_held_record_is_refused_and_kept_as_evidence(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture, signer: str
) -> None:
    """ap relays eu#1 faithfully, then a different eu#1: made up by ap (a forgery), or
    signed by eu's own key (eu equivocates: only its key could have signed both)."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    (real,) = eu_writes(tmp_path, "users/real")
    other = replace(eu_record(tmp_path), seq=real.seq)

    async def attack(us: Us) -> None:
        client = await send_as_ap(us, *sealed([real], certs))  # an honest relay first
        await wait_for(lambda: us.db.get("users/real") is not None, 10)
        await client.manager.__aexit__(None, None, None)  # type: ignore[attr-defined]
        before = snapshot(us.db)
        code = "bad_record_signature" if signer == "ap" else "equivocation"
        error = await refused(us, code, *sealed([other], certs, signer))
        assert "eu#1" in error.message
        await assert_refusal_logged(caplog, "ap", f"{code}: ", "eu#1")
        assert snapshot(us.db) == before, "the second eu#1 changed us's store"
        kind = "forgery" if signer == "ap" else "equivocation"
        (evidence,) = us.db.chains.conflicts()
        assert (evidence.origin, evidence.seq, evidence.kind, evidence.peer) == (
            "eu",
            1,
            kind,
            "ap",
        )
        assert evidence.held == record_bytes(real) and evidence.offered == record_bytes(other)
        provenance = us.db.info()["provenance"]
        assert provenance["conflicts"] == {kind: 1}
        flagged = ["eu"] if signer == "eu" else []
        assert provenance["equivocating_origins"] == flagged
        line = evidence_line(us.replicator.status()["provenance"])
        assert line is not None and f"{kind} 1" in line
        assert ("EQUIVOCATING origins: eu" in line) == (signer == "eu")
        if signer == "ap":  # eu is honest: its next records still come as records
            await real_eu_arrives_as_itself(us)

    run(tmp_path, certs, attack)


# ------------------------------------------ a bad signature, a truncated chain


@pytest.mark.parametrize("flip", ["signature", "update", "base"])
def test_a_run_altered_after_sealing_is_refused(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture, flip: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    records = eu_writes(tmp_path, "users/a", "users/b")
    certificate, genuine = sealed(records, certs)
    seal = genuine.seals[0]
    if flip == "signature":
        seal = replace(seal, signature=seal.signature[:-1] + bytes([seal.signature[-1] ^ 1]))
    elif flip == "base":
        seal = replace(seal, base=b"\x01" + seal.base[1:])
    else:
        records[1] = replace(records[1], update=records[1].update[:-1] + b"\x01")
    altered = wire.Records(tuple(records), (seal,))

    async def attack(us: Us) -> None:
        before = snapshot(us.db)
        error = await refused(us, "bad_record_signature", certificate, altered)
        assert "eu#1..2" in error.message
        await assert_refusal_logged(caplog, "ap", "bad_record_signature: ", "eu#1..2")
        assert snapshot(us.db) == before
        await real_eu_arrives_as_itself(us)

    run(tmp_path, certs, attack)


def test_a_truncated_chain_is_refused(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    records = eu_writes(tmp_path, "users/a", "users/b", "users/c")
    certificate, genuine = sealed(records, certs)
    truncated = wire.Records(genuine.records[:2], genuine.seals)  # eu#3 left out

    async def attack(us: Us) -> None:
        before = snapshot(us.db)
        error = await refused(us, "broken_chain", certificate, truncated)
        assert "a seal of eu covers 1..3" in error.message
        await assert_refusal_logged(caplog, "ap", "broken_chain: ", "covers 1..3")
        assert snapshot(us.db) == before
        await real_eu_arrives_as_itself(us)

    run(tmp_path, certs, attack)
