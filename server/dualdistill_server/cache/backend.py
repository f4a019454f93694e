"""The backend interface and the `--cache` setting: parse it (at start, with a clear error) and open it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_REDIS_TTL_SECONDS = 7 * 24 * 3600
CACHE_KINDS = ("memory", "disk:DIR", "redis://HOST:PORT/DB", "none")


class CacheBackend(Protocol):
    """A byte store. `get_many` returns one value or None per key, in order; `put_many` may drop entries
    (budget, eviction) but never stores a value under a key it was not given."""

    kind: str  # "memory" | "disk" | "redis": the `backend` label of the cache metrics

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]: ...

    async def put_many(self, items: list[tuple[bytes, bytes]]) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class CacheSpec:
    kind: str  # "memory" | "disk" | "redis" | "none"
    location: str = ""  # disk: the directory; redis: the URL without our own query parameters
    ttl_seconds: int = DEFAULT_REDIS_TTL_SECONDS  # redis only


def parse_cache_spec(spec: str) -> CacheSpec:
    """'memory' | 'none' | 'disk:DIR' | 'redis://HOST:PORT/DB[?ttl=SECONDS]' (also rediss:// and unix://).
    Raises ValueError naming the accepted forms."""
    text = spec.strip()
    if text in ("memory", "none"):
        return CacheSpec(text)
    if text.startswith("disk:"):
        directory = text.removeprefix("disk:")
        if not directory:
            raise ValueError("cache 'disk:' needs a directory, e.g. disk:/var/cache/dualdistill")
        return CacheSpec("disk", directory)
    if text.startswith(("redis://", "rediss://", "unix://")):
        parts = urlsplit(text)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ttl = DEFAULT_REDIS_TTL_SECONDS
        for name, value in query:
            if name == "ttl":
                if not value.isdigit() or int(value) < 1:
                    raise ValueError(f"cache ttl must be a whole number of seconds >= 1, got {value!r}")
                ttl = int(value)
        rest = urlencode([(n, v) for n, v in query if n != "ttl"])
        return CacheSpec("redis", urlunsplit(parts._replace(query=rest)), ttl)
    raise ValueError(f"cache must be one of {', '.join(CACHE_KINDS)}; got {spec!r}")


def open_backend(spec: str, max_bytes: int) -> CacheBackend | None:
    """The backend `spec` names (None for 'none'). `max_bytes` budgets the memory and disk backends; 0
    turns them off."""
    parsed = parse_cache_spec(spec)
    if parsed.kind == "none" or (parsed.kind in ("memory", "disk") and max_bytes == 0):
        return None
    if parsed.kind == "memory":
        from .memory import MemoryBackend

        return MemoryBackend(max_bytes)
    if parsed.kind == "disk":
        from .disk import DiskBackend

        return DiskBackend(parsed.location, max_bytes)
    from .redis_backend import RedisBackend

    return RedisBackend(parsed.location, ttl_seconds=parsed.ttl_seconds)
