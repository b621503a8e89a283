"""Child-process programs for the integration tests, and the harness that runs them.

Each ``*.py`` here (except ``harness.py``) is a standalone program started with
``sys.executable``: it opens a real store, works on it, and reports on stdout
one line at a time, flushed, so that the parent test knows exactly what was
acknowledged before it kills or stops the child.
"""
