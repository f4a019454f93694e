"""Persistent cache in one SQLite file (`--cache disk:DIR`): survives restarts, shared by the processes of
one host.

Why SQLite in WAL mode: it is in the standard library (no service to run), every write is an atomic
transaction (a crash never leaves half a value), and several processes may open the same file: in WAL
mode readers never wait for the writer, writers take turns through SQLite's file lock and wait for it
(`busy_timeout`) instead of failing. `synchronous=NORMAL` skips the fsync per commit: a power cut may lose
the last writes, which for a cache only costs recomputing them. The file must be on a local disk (SQLite's
locks are not reliable over network file systems); replicas on several hosts share Redis instead.

Size budget, LRU-ish: a `stats` row (kept by triggers, inside each write transaction, so every process
sees the same total) holds the bytes of the stored values. A write that takes the total over `max_bytes`
evicts the least recently used entries down to 90% of it. "Used" is the time of the last write or read,
refreshed on a read only when older than `touch_seconds`, so reads rarely write. The file does not shrink
(freed pages are reused); the budget counts values, not SQLite's page overhead.

All SQLite work runs on one thread per backend (its connection never crosses threads); the event loop
only awaits it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FILE_NAME = "results.sqlite3"
EVICT_TO = 0.9  # after an eviction the values take at most this share of the budget
_KEYS_PER_QUERY = 500  # well under SQLite's limit of bound parameters

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key BLOB NOT NULL UNIQUE,      -- core.cache.sequence_key, 32 bytes
    value BLOB NOT NULL,           -- lossless wire encoding of one SequenceLogits
    size INTEGER NOT NULL,         -- len(value)
    used REAL NOT NULL             -- unix time of the last write or (coarsely) read
);
CREATE INDEX IF NOT EXISTS results_used ON results(used);
CREATE TABLE IF NOT EXISTS stats (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO stats (id, bytes) VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS results_added AFTER INSERT ON results
    BEGIN UPDATE stats SET bytes = bytes + NEW.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS results_removed AFTER DELETE ON results
    BEGIN UPDATE stats SET bytes = bytes - OLD.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS results_replaced AFTER UPDATE OF size ON results
    BEGIN UPDATE stats SET bytes = bytes - OLD.size + NEW.size WHERE id = 0; END;
"""


class DiskBackend:
    kind = "disk"

    def __init__(self, directory: str | Path, max_bytes: int, *, touch_seconds: float = 60.0,
                 busy_timeout_s: float = 10.0) -> None:
        self.path = Path(directory) / FILE_NAME
        self.max_bytes = max_bytes
        self.touch_seconds = touch_seconds
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-disk")
        self._db: sqlite3.Connection | None = None
        # Opened now, so a directory that cannot hold the file fails the start, not every request.
        self._executor.submit(self._open).result()

    # ---- the coroutine API (the event loop side) ------------------------------------------------------

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return await self._run(self._get_many, keys)

    async def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        await self._run(self._put_many, items)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=False)

    def stored_bytes(self) -> int:
        """Bytes of the stored values (blocking; for tests and tools)."""
        return self._executor.submit(lambda: self._conn().execute("SELECT bytes FROM stats").fetchone()[0]).result()

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- the SQLite side (the backend's thread only) ----------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # One transaction, so processes opening a new file at once do not race on the schema.
        db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
        self._db = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the disk cache is closed")
        return self._db

    def _get_many(self, keys: list[bytes]) -> list[bytes | None]:
        db = self._conn()
        found: dict[bytes, tuple[bytes, float]] = {}
        for chunk in _chunks(list(dict.fromkeys(keys))):
            marks = ",".join("?" * len(chunk))
            for key, value, used in db.execute(f"SELECT key, value, used FROM results WHERE key IN ({marks})", chunk):
                found[bytes(key)] = (bytes(value), used)
        now = time.time()
        stale = [key for key, (_, used) in found.items() if used < now - self.touch_seconds]
        if stale:
            with _write(db):
                for chunk in _chunks(stale):
                    db.execute(f"UPDATE results SET used = ? WHERE key IN ({','.join('?' * len(chunk))})",
                               [now, *chunk])
        return [found[key][0] if key in found else None for key in keys]

    def _put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        rows = [(key, value, len(value)) for key, value in items if len(value) <= self.max_bytes]
        if not rows:
            return
        db = self._conn()
        now = time.time()
        with _write(db):
            # Results are deterministic per key, so a row is only ever replaced by the same bytes, except
            # when it could not be decoded (a damaged or foreign entry): then the fresh value repairs it.
            db.executemany(
                "INSERT INTO results (key, value, size, used) VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE "
                "SET value = excluded.value, size = excluded.size, used = excluded.used",
                [(key, value, size, now) for key, value, size in rows],
            )
            self._evict(db)

    def _evict(self, db: sqlite3.Connection) -> None:
        """Inside a write transaction: drop the least recently used rows while over budget."""
        (total,) = db.execute("SELECT bytes FROM stats WHERE id = 0").fetchone()
        if total <= self.max_bytes:
            return
        excess = total - int(self.max_bytes * EVICT_TO)
        victims, freed = [], 0
        for rowid, size in db.execute("SELECT rowid, size FROM results ORDER BY used"):
            if freed >= excess:
                break
            victims.append((rowid,))
            freed += size
        db.executemany("DELETE FROM results WHERE rowid = ?", victims)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class _write:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): take the write lock up front, so two processes that
    both read then write cannot deadlock on a lock upgrade."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _chunks(values: list) -> list[list]:
    return [values[i : i + _KEYS_PER_QUERY] for i in range(0, len(values), _KEYS_PER_QUERY)]
