"""Pairs data: loading the JSONL, the per-epoch order, the split into ranks and micro-batches, collation.

A pair's chosen sequence is `prompt_token_ids + chosen_token_ids` and its response starts at
`len(prompt_token_ids)` (the same for rejected). The data order is a pure function of (seed, epoch), never
of an RNG state, so a resumed run recomputes it from the saved (epoch, position) alone.

One optimizer step consumes G = batch_size * world_size * grad_accum_steps examples of the epoch's
permutation (the last step of an epoch fewer). Its examples are cut into micro-batches of
batch_size * world_size, and micro-batch examples are dealt to ranks strided (rank r takes every W-th,
like torch's DistributedSampler) so rank shards are disjoint and together cover the epoch exactly once.
A rank left without an example in a short last micro-batch trains on a zero-weight filler so that every
rank still joins the gradient all-reduce.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualdistill.losses.alignment import shift_labels


@dataclass(frozen=True)
class PairExample:
    """One preference pair, already cut to max_seq_len."""

    id: str
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]  # response tokens only
    rejected_ids: tuple[int, ...]
    ref_chosen_logps: float | None = None  # `reference: column`
    ref_rejected_logps: float | None = None
    digest: str = ""  # `pair_digest` of the uncut token lists: ties a capture's record to this pair
    record: dict[str, Any] = field(
        default_factory=dict, compare=False, repr=False
    )  # the line, token lists removed

    @property
    def start(self) -> int:
        return len(self.prompt_ids)

    @property
    def score_gap(self) -> float:
        """chosen_score - rejected_score from the pairs file (the filter's verdicts), for score-gap margins."""
        chosen, rejected = self.record.get("chosen_score"), self.record.get("rejected_score")
        if chosen is None or rejected is None:
            raise ValueError(
                f"pair {self.id!r} has no chosen_score / rejected_score; margin_mode='score-gap' needs pairs "
                "made by `dualdistill pairs` with a scorer, or use margin_mode='fixed'"
            )
        return float(chosen) - float(rejected)

    @property
    def chosen_sequence(self) -> list[int]:
        return list(self.prompt_ids + self.chosen_ids)

    @property
    def rejected_sequence(self) -> list[int]:
        return list(self.prompt_ids + self.rejected_ids)


def pair_digest(prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int]) -> str:
    """A short content hash of a pair's token lists (capture records are checked against it)."""
    text = json.dumps([list(prompt), list(chosen), list(rejected)], separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:20]


def _token_ids(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise ValueError(f"{where} must be a list of token ids")
    return tuple(value)


def parse_pair(line: dict[str, Any], max_seq_len: int, where: str) -> PairExample:
    """One JSONL record -> PairExample; responses longer than max_seq_len - len(prompt) are cut."""
    try:
        pair_id = str(line["id"])
        prompt = _token_ids(line["prompt_token_ids"], f"{where}: prompt_token_ids")
        chosen = _token_ids(line["chosen_token_ids"], f"{where}: chosen_token_ids")
        rejected = _token_ids(line["rejected_token_ids"], f"{where}: rejected_token_ids")
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{where}: a pair needs id, prompt_token_ids, chosen_token_ids and rejected_token_ids ({exc!r}); "
            "make pairs with `dualdistill pairs`"
        ) from None
    if not prompt:
        raise ValueError(f"{where}: pair {pair_id!r} has an empty prompt; the first token has no prediction")
    if not chosen or not rejected:
        raise ValueError(f"{where}: pair {pair_id!r} has an empty response; there is nothing to learn from")
    room = max_seq_len - len(prompt)
    if room < 1:
        raise ValueError(
            f"{where}: pair {pair_id!r} has a {len(prompt)}-token prompt, which leaves no room for a response "
            f"within max_seq_len={max_seq_len}; raise max_seq_len"
        )
    ref_c, ref_r = line.get("ref_chosen_logps"), line.get("ref_rejected_logps")
    if (len(chosen) > room or len(rejected) > room) and ref_c is not None:
        raise ValueError(
            f"{where}: pair {pair_id!r} is longer than max_seq_len={max_seq_len}, but its precomputed "
            "ref_*_logps cover the whole response; raise max_seq_len or use a served/local reference"
        )
    record = {
        k: v
        for k, v in line.items()
        if k not in ("prompt_token_ids", "chosen_token_ids", "rejected_token_ids")
    }
    # `dualdistill pairs` keeps the query's own extra fields (e.g. a verifier's "answer") under "query_extra";
    # the record is the query a verifier sees, so lift them to the top (never over a pair field).
    for key, value in (line.get("query_extra") or {}).items():
        record.setdefault(key, value)
    return PairExample(
        id=pair_id,
        prompt_ids=prompt,
        chosen_ids=chosen[:room],
        rejected_ids=rejected[:room],
        ref_chosen_logps=None if ref_c is None else float(ref_c),
        ref_rejected_logps=None if ref_r is None else float(ref_r),
        digest=pair_digest(prompt, chosen, rejected),
        record=record,
    )


def load_pairs(path: str | Path, max_seq_len: int) -> list[PairExample]:
    """All pairs of a JSONL file, in file order; ids must be unique (they key logs and captures)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist; make one with `dualdistill pairs`")
    examples: list[PairExample] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                line = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
            example = parse_pair(line, max_seq_len, where)
            if example.id in seen:
                raise ValueError(f"{where}: duplicate pair id {example.id!r}")
            seen.add(example.id)
            examples.append(example)
    if not examples:
        raise ValueError(f"pairs file {path} holds no pairs")
    return examples


def split_holdout(
    examples: list[PairExample], holdout: int, seed: int
) -> tuple[list[PairExample], list[PairExample]]:
    """(train, eval): `holdout` pairs chosen by a seeded permutation, both lists kept in file order."""
    if holdout <= 0:
        return examples, []
    if holdout >= len(examples):
        raise ValueError(f"eval_holdout={holdout} leaves no training pairs out of {len(examples)}")
    chosen = set(np.random.default_rng([seed, 1_000_003]).permutation(len(examples))[:holdout].tolist())
    train = [e for i, e in enumerate(examples) if i not in chosen]
    held = [e for i, e in enumerate(examples) if i in chosen]
    return train, held


# ---------------------------------------------------------------------------- order and sharding
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's example order: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


@dataclass(frozen=True)
class Geometry:
    """How examples are grouped: per-rank micro-batch size, ranks, micro-batches per step."""

    batch_size: int
    world_size: int
    grad_accum_steps: int

    @property
    def per_micro(self) -> int:
        return self.batch_size * self.world_size

    @property
    def per_step(self) -> int:
        return self.per_micro * self.grad_accum_steps

    def steps_per_epoch(self, num_examples: int) -> int:
        return math.ceil(num_examples / self.per_step)


@dataclass(frozen=True)
class MicroBatch:
    """This rank's share of one micro-batch of an optimizer step."""

    epoch: int
    step: int  # the optimizer step it belongs to (1-based, counted over the whole run)
    micro: int  # index within the step
    num_micro: int  # micro-batches in this step (fewer than grad_accum_steps at an epoch's end)
    indices: tuple[int, ...]  # this rank's example indices (a filler's single index when `filler`)
    filler: bool  # no example of its own: trains with weight 0 to keep the ranks in step
    step_examples: int  # examples in the whole step, over all ranks and micro-batches
    end_position: int  # position in the epoch's permutation once this step is done
    rank_indices: tuple[tuple[int, ...], ...]  # every rank's indices in this micro-batch (for logs)
    step_indices: tuple[int, ...] = ()  # every example of the whole step, all ranks and micro-batches


def iterate_micro_batches(
    num_examples: int,
    geometry: Geometry,
    rank: int,
    seed: int,
    epochs: int,
    start_epoch: int = 0,
    start_position: int = 0,
    start_step: int = 0,
    max_steps: int | None = None,
) -> Iterator[MicroBatch]:
    """This rank's micro-batches from (start_epoch, start_position) on; see the module docstring."""
    step = start_step
    for epoch in range(start_epoch, epochs):
        order = epoch_permutation(num_examples, seed, epoch)
        position = start_position if epoch == start_epoch else 0
        while position < num_examples:
            if max_steps is not None and step >= max_steps:
                return
            step += 1
            chunk = order[position : position + geometry.per_step].tolist()
            position += len(chunk)
            micros = [chunk[i : i + geometry.per_micro] for i in range(0, len(chunk), geometry.per_micro)]
            for index, micro in enumerate(micros):
                shards = tuple(tuple(micro[r :: geometry.world_size]) for r in range(geometry.world_size))
                mine = shards[rank]
                yield MicroBatch(
                    epoch=epoch,
                    step=step,
                    micro=index,
                    num_micro=len(micros),
                    indices=mine if mine else (micro[0],),
                    filler=not mine,
                    step_examples=len(chunk),
                    end_position=position,
                    rank_indices=shards,
                    step_indices=tuple(chunk),
                )


# ---------------------------------------------------------------------------- collation
@dataclass
class PairBatch:
    """A batch laid out as [chosen, rejected] (rows 0..B-1 chosen, B..2B-1 rejected), right-padded.

    input_ids (2B, L) int64; attention_mask (2B, L) int64; response_mask (2B, L) bool marks response
    tokens by their position in input_ids. labels (2B, L) / loss_mask (2B, L) are the same, shifted ONCE
    here onto the logit rows (`shift_labels`: row j predicts token j + 1), which is what every loss takes.
    sequences / starts: the unpadded (2B) token lists and response starts, as sent to the teacher.
    """

    examples: list[PairExample]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    sequences: list[list[int]]
    starts: list[int]
    labels: torch.Tensor
    loss_mask: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return len(self.examples)

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])


def collate(examples: Sequence[PairExample], pad_id: int) -> PairBatch:
    sequences = [e.chosen_sequence for e in examples] + [e.rejected_sequence for e in examples]
    starts = [e.start for e in examples] * 2
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, (sequence, start) in enumerate(zip(sequences, starts, strict=True)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
        response_mask[row, start : len(sequence)] = True
    labels, loss_mask = shift_labels(input_ids, response_mask)
    return PairBatch(
        list(examples), input_ids, attention_mask, response_mask, sequences, starts, labels, loss_mask
    )
