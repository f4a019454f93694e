"""Result-cache backends: byte stores keyed by `core.cache.sequence_key` (docs/many-students.md).

    --cache memory                 MemoryBackend: in-process LRU, `cache_bytes` budget (the default)
    --cache disk:DIR               DiskBackend: SQLite (WAL) file in DIR, `cache_bytes` budget, survives restarts
    --cache redis://HOST:PORT/DB   RedisBackend: shared by replicas; entries expire after ?ttl=SECONDS (7 days)
    --cache none                   no cache (identical sequences in flight are still computed once)

A backend stores opaque bytes (the lossless wire encoding of one sequence's result; `core/cache.py`
encodes and decodes) and knows nothing of models or metrics. Every method is a coroutine that must not
block the event loop: the disk backend runs SQLite on its own thread, the Redis one uses redis.asyncio.
Errors propagate; `core.cache.ResultCache` turns them into cache misses.
"""

from .backend import CacheBackend, CacheSpec, open_backend, parse_cache_spec

__all__ = ["CacheBackend", "CacheSpec", "open_backend", "parse_cache_spec"]
