"""A retired key's records, relayed over QUIC to a real "us": refused, and kept as
evidence the way forgeries are (a conflicts row, the status line), not only logged."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

import crdtdb
from crdtdb import membership
from crdtdb.sync.status import evidence_line

from .hostile_scenarios import LOGGER, SCENARIO_TIMEOUT, Us, assert_refusal_logged, running_us
from .hostile_scenarios import sealed as sealed_run
from .test_hostile_records import refused

pytestmark = pytest.mark.integration


def test_records_sealed_by_a_removed_regions_key_are_refused_and_kept(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def attack(us: Us) -> None:
        removed = membership.remove(us.db, "eu")
        assert removed.since is not None and removed.final_seq == 0
        # eu's real key, over a record stamped after the removal (100 ms ahead of now:
        # within the clock offset us takes)
        late = lambda: time.time_ns() // 1_000_000 + 100  # noqa: E731
        with crdtdb.open(tmp_path / "eu", region="eu", clock=late) as eu:
            eu.put("users/late", {"by": "eu"})
            (record,) = eu.records_from("eu", 0)
        assert record.hlc > removed.since.hlc
        error = await refused(us, "retired_key", *sealed_run([record], certs))
        assert "eu#1" in error.message
        await assert_refusal_logged(caplog, "ap", "retired_key: ", "eu#1")
        assert us.db.get("users/late") is None
        (evidence,) = us.db.chains.conflicts()
        assert (evidence.origin, evidence.seq, evidence.kind, evidence.peer) == (
            "eu",
            1,
            "retired_key",
            "ap",
        )
        assert evidence.held is None and evidence.seal is not None
        line = evidence_line(us.replicator.status()["provenance"])
        assert line == "record evidence: retired_key 1 (kept in the store's conflicts table)"

    async def scenario() -> None:
        async with (
            asyncio.timeout(SCENARIO_TIMEOUT),
            running_us(tmp_path, certs, ("eu", "ap")) as us,
        ):
            await attack(us)

    asyncio.run(scenario())
