"""Write from several threads at once (so that their commits form groups) until killed.

Usage: ``group_writer.py DIR --threads N``

Prints ``{"ev": "ready"}`` once the store is open, then, for every write a thread
made, ``{"ev": "ack", "t": thread, "i": i, "hlc": hlc}`` after ``db.update``
returned (committed). Thread ``t`` writes ``{"t": t, "i": i}`` to ``group/t`` for
``i`` = 0, 1, 2, ... (at most ``LIMIT``). The parent kills this process with SIGKILL;
every acknowledged write must be on disk.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

import crdtdb

LIMIT = 100_000  # the parent kills us long before; bounded in case it does not


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    db = crdtdb.open(args.store, region="eu")
    out = threading.Lock()

    def say(message: dict[str, int | str]) -> None:
        with out:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

    def write(t: int) -> None:
        for i in range(LIMIT):
            hlc = db.update(f"group/{t}", {"t": t, "i": i})
            say({"ev": "ack", "t": t, "i": i, "hlc": int(hlc)})

    say({"ev": "ready"})
    threads = [threading.Thread(target=write, args=(t,)) for t in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
