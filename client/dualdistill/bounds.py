"""Bounds checks for every config object (losses, pairs, trainer, demo, client, teacher parameters).

One wording for every bad value: the field's name, the value, and what would be accepted. Kept free of
imports beyond the standard library, so the contract package (`dualdistill.protocol`) can use it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_choice(name: str, value: str, supported: Sequence[str]) -> None:
    """Raise ValueError listing the supported values when `value` is not one of them."""
    if value not in supported:
        raise ValueError(
            f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, supported))}"
        )


def check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ValueError unless `value` is finite and within [low, high] (open ends where asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{name}={value!r} must be a finite number in {interval}")


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> None:
    """Raise ValueError unless `value` is an int (not a bool) within [low, high]."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        interval = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name}={value!r} must be an integer in {interval}")
