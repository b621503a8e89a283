"""crdtdb.sync: replication between regions over QUIC (see issue: Sync).

Not built yet: importing it gives only this package. The embedded core
already records everything replication needs (origin, seq, HLC, digests,
Merkle tree) and ``Database.apply_remote`` applies records idempotently.
"""
