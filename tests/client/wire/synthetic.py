"""Seeded synthetic teacher responses shaped like SmolLM2-135M's (bench/wire_size.py measures the real one).

Logits over a 49,152-id vocabulary = a Zipf prior over ids (low BPE ids are frequent, so the low-
probability end of every row is drawn from the same few thousand ids) + Gaussian noise + a context
"head" of 40 ids per position drawn from a 4,000-id topic pool, boosted with Gumbel noise (the
confident predictions). Parameters were fitted by hand to SmolLM2 on docstring text at k=128:
median top-1 probability around 0.4, p at rank 128 around 1e-4, a few thousand distinct ids per
response (test_wire_quality.py checks these ranges). Neighbouring rows overlap less than SmolLM2's,
so it is, if anything, harder to compress.
"""

from __future__ import annotations

import numpy as np

from dualdistill.protocol.results import SequenceLogits


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    return logits - (np.log(np.exp(logits - top).sum(axis=1, keepdims=True)) + top)


def teacher_response(
    sequences: int = 4, rows: int = 128, *, k: int = 128, vocab: int = 49152, seed: int = 0, batch: int = 64
) -> list[SequenceLogits]:
    """`sequences` SequenceLogits of `rows` positions each, exact top-k + tail, like one service response."""
    rng = np.random.default_rng(seed)
    prior = -np.log1p(np.arange(vocab) / 400.0)
    pool = rng.choice(vocab, min(4000, vocab), replace=False)
    n_head = min(40, len(pool))
    ids, values, tails, tokens = [], [], [], []
    for _ in range(0, sequences * rows, batch):
        logits = prior + 0.9 * rng.standard_normal((batch, vocab))
        head = pool[np.argsort(rng.random((batch, len(pool))), axis=1)[:, :n_head]]
        boosted = np.take_along_axis(logits, head, 1) + 6.5 + 1.3 * rng.gumbel(size=head.shape)
        np.put_along_axis(logits, head, boosted, 1)
        logprobs = _log_softmax(logits)
        top = (
            np.argpartition(-logprobs, k - 1, axis=1)[:, :k]
            if k < vocab
            else np.tile(np.arange(vocab), (batch, 1))
        )
        top = np.take_along_axis(
            top, np.argsort(-np.take_along_axis(logprobs, top, 1), axis=1, kind="stable"), 1
        )
        rest = logprobs.copy()
        np.put_along_axis(rest, top, -np.inf, 1)
        peak = rest.max(axis=1)
        with np.errstate(invalid="ignore"):
            tail = np.where(
                np.isfinite(peak), np.log(np.exp(rest - peak[:, None]).sum(axis=1)) + peak, -np.inf
            )
        ids.append(top)
        values.append(np.take_along_axis(logprobs, top, 1))
        tails.append(tail)
        tokens.append(logprobs[np.arange(batch), rng.integers(0, vocab, batch)])
    ids, values, tails, tokens = (np.concatenate(a)[: sequences * rows] for a in (ids, values, tails, tokens))
    return [
        SequenceLogits.from_dense(ids[sl], values[sl], tokens[sl], tails[sl])
        for sl in (slice(s * rows, (s + 1) * rows) for s in range(sequences))
    ]
