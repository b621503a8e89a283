"""crdtdb.query: the merged state of all regions in DuckDB (not built yet)."""
