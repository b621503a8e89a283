"""One harness for the tests and the benchmarks: processes, waiting, ports, configs, links.

- :mod:`.process`: child processes read with deadlines and always stopped
  (:class:`~.process.Child`, :class:`~.process.Group`, :func:`~.process.running`);
- :mod:`.wait`: wait for a condition with a deadline, sync and async, and the
  :class:`~.wait.HarnessError` every helper here raises;
- :mod:`.ports`: free ports on loopback;
- :mod:`.config`: certificates and region configs (TOML for a daemon, a
  ``RegionConfig`` for an in-process replicator);
- :mod:`.daemon`: a ``crdtdb serve`` daemon and its status file;
- :mod:`.link`: two sans-IO sync sessions wired together in memory.

Tests import it as ``from .harness.process import Child``; the benchmark
scripts through ``bench/_harness.py``, which puts the repository root on
``sys.path``. Import the modules, not this package: ``config`` and ``link``
pull in ``crdtdb.sync``, the rest only the standard library.
"""
