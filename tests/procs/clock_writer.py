"""An application process of one region for the clock-fence tests: writes, reports each.

Usage: ``clock_writer.py DIR REGION TAG [--interval S]``

It opens the region's store with the embedded library (``crdtdb.open``) and
puts ``TAG/N`` for N = 1, 2, ... every ``--interval`` seconds until its stdin
closes, printing one JSON line per attempt *after* it returned:
``{"ev": "ack", "doc": ID, "hlc": INT}`` for a committed write, or
``{"ev": "refused", "doc": ID, "code": CODE, "message": TEXT}`` for one the
store refused (and then the document must not exist). ``{"ev": "done"}`` last.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

import crdtdb
from crdtdb.errors import CrdtdbError


def emit(value: dict[str, Any]) -> None:
    print(json.dumps(value, sort_keys=True), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("region")
    parser.add_argument("tag")
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    db = crdtdb.open(args.dir, region=args.region)
    n = 0
    while not stop.wait(args.interval):
        n += 1
        doc = f"{args.tag}/{n}"
        try:
            hlc = db.put(doc, {"n": n, "region": args.region})
        except CrdtdbError as exc:
            emit({"ev": "refused", "doc": doc, "code": exc.code, "message": str(exc)})
            continue
        emit({"ev": "ack", "doc": doc, "hlc": int(hlc)})
    db.close()
    emit({"ev": "done"})


if __name__ == "__main__":
    main()
