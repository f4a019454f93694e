"""In-process LRU of byte values with a byte budget (`--cache memory`, the default)."""

from __future__ import annotations

from collections import OrderedDict


class MemoryBackend:
    """Least recently used entries go first once the values' bytes exceed `max_bytes` (keys are 32 bytes
    and not counted). A value larger than the whole budget is not stored. Runs on the event loop: every
    operation is a dict operation, with no I/O."""

    kind = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.stored_bytes = 0
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        out = []
        for key in keys:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            out.append(value)
        return out

    async def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        for key, value in items:
            if len(value) > self.max_bytes:
                continue
            old = self._entries.pop(key, None)  # the same bytes, unless the old value could not be decoded
            if old is not None:
                self.stored_bytes -= len(old)
            self._entries[key] = value
            self.stored_bytes += len(value)
        while self.stored_bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.stored_bytes -= len(evicted)

    async def close(self) -> None:
        self._entries.clear()
        self.stored_bytes = 0
