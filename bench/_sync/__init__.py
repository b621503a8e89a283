"""The sections of the sync benchmark (``bench/bench_sync.py`` runs them).

- :mod:`.common`: sizes, documents, regions, child processes;
- :mod:`.bootstrap`: 4, bulk bootstrap of a fresh region;
- :mod:`.ae`: 1, anti-entropy efficiency, in memory;
- :mod:`.rate`: 2 and 3, lag, replicated updates/s, the pipeline's capacity;
- :mod:`.roles`: what the child processes run;
- :mod:`.report`: the plain-text report and the target checks.
"""
