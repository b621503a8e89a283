"""Child-process programs for the integration tests (``tests/harness/process.py`` runs them).

Each ``*.py`` here is a standalone program started with
``sys.executable``: it opens a real store, works on it, and reports on stdout
one line at a time, flushed, so that the parent test knows exactly what was
acknowledged before it kills or stops the child.
"""
