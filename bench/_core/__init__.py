"""Pieces of the core benchmark (``bench/bench_core.py``): :mod:`.common` (sizes, systems,
timing) and :mod:`.report` (the report, the targets, the JSON output)."""
