"""`LogitsParams`: the teacher parameters of a logits request, declared once for every layer.

What a row of teacher logits means is fixed by these five values (with the model and the sequence): the
client's `logits(...)`, the trainer's teacher sources, offline captures, the server's request schema
and its per-sequence tasks all carry one `LogitsParams` instead of re-declaring the fields.

Only the static bounds live here. The bounds that depend on the served model and the server's settings
(top_k <= max_top_k, samples <= max_samples) are the server's to check: it is the one that knows them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields, replace
from typing import Any

from dualdistill.bounds import check_choice, check_int, check_range

LOGITS_MODES = ("topk", "sample")
# Below this, logits / temperature overflows float32 for ordinary logits (|logit| ~ 1e2 / 1e-36 > 3.4e38)
# and the distribution turns to NaN; 1e-4 already makes any model's distribution one-hot in practice.
MIN_TEMPERATURE = 1e-4
# Temperatures travel as float32 (the proto's `float`; the server rounds HTTP values to it too), and 1e-4
# is 9.99999975e-05 there: the bound is checked against the float32 value, so 1e-4 passes on both transports.
MIN_TEMPERATURE_FLOAT32 = struct.unpack("<f", struct.pack("<f", MIN_TEMPERATURE))[0]
UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class LogitsParams:
    """Teacher parameters of a logits request (the same names as the proto's `LogitsRequest` fields)."""

    top_k: int = 20  # entries per row in "topk" mode (the row width); >= 1
    temperature: float = 1.0  # p = softmax(logits / temperature); finite, >= MIN_TEMPERATURE
    mode: str = "topk"  # "topk": the k most likely ids; "sample": `samples` draws from p per position
    samples: int = 64  # draws per position in "sample" mode; >= 1
    seed: int = 0  # "sample" mode: with the sequence and start it fixes the random stream; 0..2**64-1

    def __post_init__(self) -> None:
        check_int("top_k", self.top_k, 1)
        check_range("temperature", self.temperature, MIN_TEMPERATURE_FLOAT32)
        check_choice("mode", self.mode, LOGITS_MODES)
        check_int("samples", self.samples, 1)
        check_int("seed", self.seed, 0, UINT64_MAX)
        object.__setattr__(self, "temperature", float(self.temperature))

    def with_overrides(self, **overrides: Any) -> LogitsParams:
        """A copy with some fields replaced (a misspelt name is a TypeError naming it)."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(_FIELD_NAMES))
        if unknown:
            raise TypeError(f"unknown logits parameter(s) {unknown}; known: {sorted(_FIELD_NAMES)}")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The request fields, as JSON / proto `LogitsRequest` spells them (every field is a scalar, so no
        deep copy: `dataclasses.asdict` cost a client tens of microseconds per call)."""
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    def meaning(self) -> dict[str, Any]:
        """The fields that change the rows: `samples` and `seed` matter in "sample" mode only."""
        fields = {"top_k": self.top_k, "temperature": self.temperature, "mode": self.mode}
        if self.mode == "sample":
            fields.update(samples=self.samples, seed=self.seed)
        return fields


_FIELD_NAMES = tuple(field.name for field in fields(LogitsParams))
