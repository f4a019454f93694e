"""core/payload.py: which responses are encoded on the event loop (`encodes_inline`)."""

from __future__ import annotations

import numpy as np

from dualdistill.protocol.results import SequenceLogits
from dualdistill_server.core import LogitsResult
from dualdistill_server.core.payload import INLINE_ENTRIES, encodes_inline


def _result(*entries_per_sequence: int, k: int = 128) -> LogitsResult:
    """One sequence per argument, each with that many top-k entries (rows of k)."""
    results = []
    for entries in entries_per_sequence:
        rows = entries // k
        results.append(SequenceLogits(row_lengths=np.full(rows, k), top_ids=np.zeros(rows * k),
                                      top_logprobs=np.zeros(rows * k), token_logprobs=np.zeros(rows),
                                      tail_logprobs=np.zeros(rows)))  # fmt: skip
    return LogitsResult("m", "f", "r", results)


def test_a_small_response_on_an_idle_server_is_encoded_on_the_loop() -> None:
    assert INLINE_ENTRIES == 8192
    assert encodes_inline(_result(56 * 128), others_in_flight=0)  # one sequence of 64 tokens, start 8
    assert encodes_inline(_result(4096, 4096), others_in_flight=0)  # the bound counts every sequence


def test_a_large_response_or_a_busy_server_encodes_in_a_thread() -> None:
    assert not encodes_inline(_result(4096, 4096 + 128), others_in_flight=0)
    assert not encodes_inline(_result(128), others_in_flight=1)
