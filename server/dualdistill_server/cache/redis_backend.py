"""Cache shared by replicas in Redis (`--cache redis://HOST:PORT/DB[?ttl=SECONDS]`), via redis.asyncio.

Entries are `SET key value EX ttl`: every entry expires `ttl` seconds (default 7 days) after it was
written, so a Redis without a memory limit still forgets old runs. Size is Redis's job: run it with
`maxmemory` and `maxmemory-policy allkeys-lru` (or volatile-lru; every key has a TTL), and without
persistence if losing the cache on a Redis restart is acceptable (it only costs recomputing). See
docs/many-students.md.

Timeouts are short and the client does not retry: when Redis is down, `core.cache.ResultCache` stops
asking it for a while and the service computes instead, so a dead Redis costs one timeout, not one per
request.
"""

from __future__ import annotations

KEY_PREFIX = b"dualdistill:result:"


class RedisBackend:
    kind = "redis"

    def __init__(self, url: str, *, ttl_seconds: int, timeout_s: float = 1.0, max_connections: int = 32) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.ttl_seconds = ttl_seconds
        # No connection is made here: the first command connects (Redis may start after the teacher).
        # A blocking pool: a burst of requests waits (briefly) for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._client = aioredis.Redis(connection_pool=pool)

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        return list(await self._client.mget([KEY_PREFIX + key for key in keys]))

    async def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        if not items:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for key, value in items:
                pipe.set(KEY_PREFIX + key, value, ex=self.ttl_seconds)
            await pipe.execute()

    async def close(self) -> None:
        await self._client.aclose()
        await self._client.connection_pool.disconnect()
