"""Signed records: what sealing and checking cost, per record (issue 13).

Sections, all in one process, on records of ``--update-bytes`` bytes:

1. **pure**: chain hashing alone, then sealing (hash chain + one ECDSA P-256
   signature per run) and verifying (chain + one signature check per run),
   per record, for runs of 1, 16 and 256 records (the daemon seals a batch
   as one run of up to 256): the signature's cost spreads over the run.
2. **store**: on real SQLite stores, :meth:`Provenance.seal_own` over N
   committed records (reads them, chains, signs, writes the chain rows), and
   applying N received records with their seals checked
   (``Provenance.check`` + ``apply_remote_many(records, chain)``) against
   applying them unchecked (``apply_remote_many(records)``, what protocol 4
   did), in batches of 256 as a ``Records`` message brings them.

Each number is the median of ``--repeats`` runs. Prints a table; ``--out``
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crdtdb
from crdtdb.hlc import Hlc
from crdtdb.records import UpdateRecord
from crdtdb.sync.certs import init_ca, issue
from crdtdb.sync.provenance import Provenance
from crdtdb.sync.signing import GENESIS, Signer, chain_hashes, verify_run

RUN_SIZES = (1, 16, 256)


def median_us(fn: Callable[[], int], repeats: int) -> float:
    """Median over ``repeats`` of µs per item (``fn`` returns how many it did)."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        count = fn()
        samples.append((time.perf_counter() - started) * 1e6 / count)
    return statistics.median(samples)


def pure(signer: Signer, records: list[UpdateRecord], repeats: int) -> list[dict[str, Any]]:
    key = signer._key.public_key()
    rows = [
        {
            "what": "chain hash only",
            "run": "-",
            "us": median_us(lambda: len(chain_hashes(GENESIS, records)), repeats),
        }
    ]
    for size in RUN_SIZES:
        runs = [records[i : i + size] for i in range(0, len(records) - size + 1, size)]
        sealed = [signer.seal(GENESIS, run)[1] for run in runs]

        def seal_all(runs: list[list[UpdateRecord]] = runs) -> int:
            for run in runs:
                signer.seal(GENESIS, run)
            return sum(len(run) for run in runs)

        def verify_all(runs: list[list[UpdateRecord]] = runs, sealed: Any = sealed) -> int:
            for seal, run in zip(sealed, runs, strict=True):
                verify_run(seal, run, key)
            return sum(len(run) for run in runs)

        rows.append({"what": "seal (sign)", "run": size, "us": median_us(seal_all, repeats)})
        rows.append({"what": "verify", "run": size, "us": median_us(verify_all, repeats)})
    return rows


def store(
    certs: Path, tmp: Path, count: int, update_bytes: int, repeats: int
) -> list[dict[str, Any]]:
    ca = (certs / "ca.pem").read_bytes()

    def region(name: str) -> tuple[crdtdb.Database, Provenance]:
        db = crdtdb.open(tmp / f"{name}-{time.perf_counter_ns()}", region=name)
        signer = Signer(
            name, (certs / f"{name}.pem").read_bytes(), (certs / f"{name}.key").read_bytes()
        )
        made = Provenance(db, ca, signer)
        made.start()
        return db, made

    seal_us, checked_us, plain_us = [], [], []
    for _ in range(repeats):
        eu_db, eu = region("eu")
        with eu_db.transaction() as tx:
            for i in range(count):
                tx.doc(f"d/{i}")["v"] = "x" * update_bytes
        started = time.perf_counter()
        eu.seal_own()
        seal_us.append((time.perf_counter() - started) * 1e6 / count)
        runs = eu.runs_from("eu", 0, count)
        us_db, us = region("us")
        us.note_certificates(eu.certificates([runs[0][0].key]))
        started = time.perf_counter()
        for seal, run in runs:
            records, chain = us.check(run, [seal], "eu")
            us_db.apply_remote_many(records, chain)
        checked_us.append((time.perf_counter() - started) * 1e6 / count)
        ap_db, _ = region("ap")
        started = time.perf_counter()
        for _, run in runs:
            ap_db.apply_remote_many(run)
        plain_us.append((time.perf_counter() - started) * 1e6 / count)
        for db in (eu_db, us_db, ap_db):
            db.close()
    return [
        {"what": "seal_own (store)", "run": 256, "us": statistics.median(seal_us)},
        {"what": "apply, seals checked", "run": 256, "us": statistics.median(checked_us)},
        {"what": "apply, unchecked (v4)", "run": 256, "us": statistics.median(plain_us)},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=4096)
    parser.add_argument("--update-bytes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        init_ca(tmp / "certs")
        for name in ("eu", "us", "ap"):
            issue(tmp / "certs", name)
        signer = Signer(
            "eu", (tmp / "certs/eu.pem").read_bytes(), (tmp / "certs/eu.key").read_bytes()
        )
        records = [
            UpdateRecord(f"d/{i}", Hlc(1_000 + i), "eu", i + 1, bytes(args.update_bytes))
            for i in range(args.records)
        ]
        print("pure ...", file=sys.stderr)
        rows = pure(signer, records, args.repeats)
        print("store ...", file=sys.stderr)
        rows += store(tmp / "certs", tmp, args.records, args.update_bytes, args.repeats)
    print(f"{'what':<24} {'run':>5} {'µs/record':>10}")
    for row in rows:
        print(f"{row['what']:<24} {row['run']!s:>5} {row['us']:>10.2f}")
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
