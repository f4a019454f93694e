"""`Scorer`, the interface every scorer implements (scorers.py and reward_model.py both build on it)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from dualdistill.client.types import Completion


class Scorer:
    """Base class: subclasses implement `ascore` (and may override `score` when they are synchronous)."""

    name: str = ""  # the spec string, recorded in every output line

    async def ascore(self, query: dict, completions: Sequence[Completion]) -> list[float]:
        raise NotImplementedError

    def score(self, query: dict, completions: Sequence[Completion]) -> list[float]:
        """Synchronous scoring; runs `ascore` on a private event loop (call it outside a running loop)."""
        return asyncio.run(self.ascore(query, completions))

    def close(self) -> None:
        """Release what the scorer holds (models, clients it created)."""
