"""Pieces of the query benchmark (``bench/bench_query.py``): :mod:`.writers` (section 5,
the writer beside a reader and a refresher) and :mod:`.report` (the report)."""
