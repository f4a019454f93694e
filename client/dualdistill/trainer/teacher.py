"""Where a batch's teacher rows (and served reference scores) come from: a live service or a capture.

    LiveTeacher     TeacherClient.logits on the batch's [chosen, rejected] sequences (one request), plus
                    one top_k=1 request to the reference model when `reference: served:NAME`
    CaptureTeacher  the same results read from a `dualdistill capture` directory by pair id

Both return `FetchedTeacher` and are called from the Prefetcher's worker threads, so they are
thread-safe. The reference score of a sequence is the sum (or, with length_normalize, the mean) of the
reference model's token_logprobs over the response, exactly what `TeacherLogits.sequence_logps` computes
from the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dualdistill.protocol.params import LogitsParams
from dualdistill.protocol.results import SequenceLogits
from dualdistill.trainer.capture.store import CaptureReader, CaptureSettings, take_rows
from dualdistill.trainer.data import PairExample

# A DPO reference is asked only for its token logprobs; the smallest legal row keeps the answer small.
REFERENCE_PARAMS = LogitsParams(top_k=1)


@dataclass
class FetchedTeacher:
    """Teacher rows for B pairs; reference scores (B,) when the reference is served, else None."""

    chosen: list[SequenceLogits]
    rejected: list[SequenceLogits]
    ref_chosen: np.ndarray | None = None
    ref_rejected: np.ndarray | None = None


def reference_scores(results: Sequence[SequenceLogits], length_normalize: bool) -> np.ndarray:
    """(B,) float32: sum_i token_logprobs[i] over each result's rows (mean when length_normalize)."""
    scores = np.array([np.sum(r.token_logprobs, dtype=np.float64) for r in results], dtype=np.float64)
    if length_normalize:
        scores = scores / np.maximum([r.num_rows for r in results], 1)
    return scores.astype(np.float32)


def sequences_of(examples: Sequence[PairExample]) -> tuple[list[list[int]], list[int]]:
    """The [chosen..., rejected...] token lists and response starts of a batch."""
    sequences = [e.chosen_sequence for e in examples] + [e.rejected_sequence for e in examples]
    return sequences, [e.start for e in examples] * 2


class LiveTeacher:
    """Teacher rows from a running service."""

    def __init__(
        self,
        client: Any,
        model: str,
        *,
        params: LogitsParams,
        reference_model: str | None = None,
        length_normalize: bool = False,
    ) -> None:
        self.client = client
        self.model = model
        self.params = params
        self.reference_model = reference_model
        self.length_normalize = length_normalize

    def handshake(self, tokenizer: Any) -> dict[str, Any]:
        """Refuse a student tokenizer that is not the teacher's (and the served reference's)."""
        info = self.client.check_tokenizer(tokenizer, self.model)
        facts = {"teacher_model": info.name, "teacher_fingerprint": info.fingerprint}
        if self.reference_model is not None:
            ref = self.client.check_tokenizer(tokenizer, self.reference_model)
            facts["reference_fingerprint"] = ref.fingerprint
        return facts

    def fetch(self, examples: Sequence[PairExample]) -> FetchedTeacher:
        sequences, starts = sequences_of(examples)
        results = self.client.logits(self.model, sequences, starts, self.params)
        b = len(examples)
        fetched = FetchedTeacher(chosen=results[:b], rejected=results[b:])
        if self.reference_model is not None:
            ref = self.client.logits(self.reference_model, sequences, starts, REFERENCE_PARAMS)
            scores = reference_scores(ref, self.length_normalize)
            fetched.ref_chosen, fetched.ref_rejected = scores[:b], scores[b:]
        return fetched

    def close(self) -> None:
        self.client.close()


class CaptureTeacher:
    """Teacher rows from a capture directory (`teacher_url: capture:DIR`)."""

    def __init__(
        self,
        directory: str,
        model: str,
        *,
        params: LogitsParams,
        reference_model: str | None = None,
        length_normalize: bool = False,
    ) -> None:
        self.reader = CaptureReader(directory)
        settings: CaptureSettings = self.reader.settings
        wanted = {"teacher_model": model, **params.meaning()}
        have = {"teacher_model": settings.teacher_model, **settings.params.meaning()}
        if reference_model is not None:
            wanted["reference_model"] = reference_model
            have["reference_model"] = settings.reference_model
        differ = [
            f"{key}: capture {have.get(key)!r}, config {value!r}"
            for key, value in wanted.items()
            if have.get(key) != value
        ]
        if differ:
            raise ValueError(
                f"the capture in {directory} does not match this run ({'; '.join(differ)}); set the run's "
                "teacher settings to the capture's or recapture"
            )
        self.reference_model = reference_model
        self.length_normalize = length_normalize
        self.settings = settings

    def handshake(self, tokenizer: Any) -> dict[str, Any]:
        from dualdistill.client.handshake import check_tokenizer_against
        from dualdistill.client.types import ModelInfo

        info = ModelInfo(
            name=self.settings.teacher_model,
            vocab_size=self.settings.vocab_size,
            tokenizer_sha256=self.settings.tokenizer_sha256,
            max_seq_len=0,
            max_top_k=self.settings.params.top_k,
            fingerprint=self.settings.teacher_fingerprint,
        )
        check_tokenizer_against(tokenizer, info)
        facts = {"teacher_model": info.name, "teacher_fingerprint": info.fingerprint}
        if self.reference_model is not None:
            facts["reference_fingerprint"] = self.settings.reference_fingerprint
        return facts

    def fetch(self, examples: Sequence[PairExample]) -> FetchedTeacher:
        chosen, rejected, ref_c, ref_r = [], [], [], []
        for example in examples:
            results = self.reader.get(example.id, example.digest)
            expected = 4 if self.reference_model is not None else 2
            if len(results) < expected:
                raise ValueError(f"the capture's record of pair {example.id!r} has no reference results")
            # a training max_seq_len below the capture's cuts responses: keep their first rows (exact)
            rows = (len(example.chosen_ids), len(example.rejected_ids))
            if rows[0] > results[0].num_rows or rows[1] > results[1].num_rows:
                raise ValueError(
                    f"pair {example.id!r}: the capture holds fewer positions than this run trains on (it was "
                    f"made with max_seq_len={self.settings.max_seq_len}); lower max_seq_len or recapture"
                )
            chosen.append(take_rows(results[0], rows[0]))
            rejected.append(take_rows(results[1], rows[1]))
            if self.reference_model is not None:
                ref_c.append(take_rows(results[2], rows[0]))
                ref_r.append(take_rows(results[3], rows[1]))
        fetched = FetchedTeacher(chosen=chosen, rejected=rejected)
        if self.reference_model is not None:
            fetched.ref_chosen = reference_scores(ref_c, self.length_normalize)
            fetched.ref_rejected = reference_scores(ref_r, self.length_normalize)
        return fetched

    def close(self) -> None:
        self.reader.close()
