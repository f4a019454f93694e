"""`TeacherLogits`: a batch of teacher next-token distributions as padded tensors, aligned with student logits.

Alignment. A causal student fed `input_ids` x[0..L-1] returns logits whose position j predicts token x[j+1].
The service returns, for each position i in [start, T), the teacher row p(. | x[:i]), which predicts x[i].
That row is stored at index j = i - 1, next to the student logits that predict the same token:

    input_ids       x0    x1    x2    x3    x4    (pad)      start = 2, T = 5, L = 6
    student logits  q(x1) q(x2) q(x3) q(x4) q(.)  q(.)       logits[:, j] predicts x[j+1]
    teacher rows    -     -     p(x2) p(x3) p(x4) -          row for position i at index i - 1
    mask            F     F     T     T     T     F
    index j         0     1     2     3     4     5

Rows without a teacher (mask False) hold ids 0, logprobs -inf, token_logprobs 0 and tail 0 (all mass
"outside the ids"), so every row is a proper distribution and sums over them stay finite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dualdistill.protocol.results import SequenceLogits

__all__ = ["TeacherLogits"]


@dataclass
class TeacherLogits:
    """Teacher rows for a batch, index j predicting token j + 1 of the student's input (module docstring).

    Fields (B = batch, L = student sequence length, k = entries per row):
        ids: (B, L, k) int64 token ids of each row, unique within a row; padding entries have logprob -inf.
        logprobs: (B, L, k) float32 log p(id | x[:j+1]) at the server's temperature; padding -inf.
        token_logprobs: (B, L) float32 log p(x[j+1] | x[:j+1]) of the actual next token; 0 where masked.
        tail: (B, L) float32 log of the mass outside the row's ids; -inf when the ids cover the vocabulary.
        mask: (B, L) bool, True where a teacher row exists.
        counts: (B, L, k) int32 draws per id ("sample" mode) or None ("topk" mode); 0 on padding.
        samples: draws per position N in "sample" mode (each row's counts sum to N), else None.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    token_logprobs: torch.Tensor
    tail: torch.Tensor
    mask: torch.Tensor
    counts: torch.Tensor | None = None
    samples: int | None = None

    def __post_init__(self) -> None:
        if self.ids.dim() != 3:
            raise ValueError(f"ids must be (B, L, k), got shape {tuple(self.ids.shape)}")
        b, length, k = self.ids.shape
        expected = {
            "logprobs": (self.logprobs, (b, length, k)),
            "token_logprobs": (self.token_logprobs, (b, length)),
            "tail": (self.tail, (b, length)),
            "mask": (self.mask, (b, length)),
        }
        if self.counts is not None:
            expected["counts"] = (self.counts, (b, length, k))
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"{name} must have shape {shape} to match ids (B, L, k) = {(b, length, k)}, "
                    f"got {tuple(tensor.shape)}"
                )
        if self.ids.dtype.is_floating_point or self.ids.dtype == torch.bool:
            raise ValueError(f"ids must be an integer tensor, got {self.ids.dtype}")
        if self.mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {self.mask.dtype}")
        for name in ("logprobs", "token_logprobs", "tail"):
            if not getattr(self, name).dtype.is_floating_point:
                raise ValueError(f"{name} must be a floating-point tensor, got {getattr(self, name).dtype}")
        if (self.counts is None) != (self.samples is None):
            raise ValueError("counts and samples go together: set both ('sample' mode) or neither ('topk')")
        if self.samples is not None and self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.ids.shape[1]

    @property
    def k(self) -> int:
        return self.ids.shape[2]

    @property
    def device(self) -> torch.device:
        return self.ids.device

    @property
    def is_sampled(self) -> bool:
        return self.counts is not None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TeacherLogits:
        """A copy on `device` (dtypes unchanged)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return TeacherLogits(
            ids=move(self.ids),
            logprobs=move(self.logprobs),
            token_logprobs=move(self.token_logprobs),
            tail=move(self.tail),
            mask=move(self.mask),
            counts=move(self.counts),
            samples=self.samples,
        )

    def sequence_logps(
        self, loss_mask: torch.Tensor | None = None, length_normalize: bool = False
    ) -> torch.Tensor:
        """Teacher score of each sequence: sum of token_logprobs over the selected rows -> (B,) float32.

        `loss_mask` (B, L) selects rows, aligned like the rows themselves (`shift_labels`: row j predicts
        token j + 1), combined with `mask`; None: every teacher row. With `length_normalize` the sum is
        divided by the number of rows (a sequence with none scores 0). This is the reference
        log-probability of DPO when the service plays the reference model.
        """
        keep = self.mask
        if loss_mask is not None:
            if tuple(loss_mask.shape) != tuple(self.mask.shape):
                raise ValueError(
                    f"loss_mask must have shape (B, L) = {tuple(self.mask.shape)}, got {tuple(loss_mask.shape)}"
                )
            keep = keep & loss_mask.to(torch.bool)
        logps = torch.where(keep, self.token_logprobs.float(), 0.0).sum(-1)
        if length_normalize:
            logps = logps / keep.sum(-1).clamp(min=1)
        return logps

    def __getitem__(self, rows: slice) -> TeacherLogits:
        """The rows `rows` of the batch dimension (e.g. `teacher[:b]`, the chosen half), as views."""
        if not isinstance(rows, slice):
            raise TypeError(f"TeacherLogits takes a slice of batch rows, got {type(rows).__name__}")
        return TeacherLogits(
            ids=self.ids[rows],
            logprobs=self.logprobs[rows],
            token_logprobs=self.token_logprobs[rows],
            tail=self.tail[rows],
            mask=self.mask[rows],
            counts=None if self.counts is None else self.counts[rows],
            samples=self.samples,
        )

    @classmethod
    def cat(cls, parts: Sequence[TeacherLogits], seq_len: int | None = None) -> TeacherLogits:
        """Stack batches on the batch dim (e.g. [chosen; rejected]), padding L (to `seq_len` or the longest)
        and k with empty rows and entries."""
        if not parts or len({p.is_sampled for p in parts}) > 1:
            raise ValueError(
                "cat needs at least one TeacherLogits, all in the same mode ('topk' or 'sample')"
            )
        length = max(p.seq_len for p in parts) if seq_len is None else seq_len
        width = max(p.k for p in parts)

        def pad(t: torch.Tensor, value: float, p: TeacherLogits) -> torch.Tensor:
            extra = [length - p.seq_len] if t.dim() == 2 else [width - p.k, length - p.seq_len]
            return torch.nn.functional.pad(t, [x for e in extra for x in (0, e)], value=value)

        def field(name: str, value: float) -> torch.Tensor:
            return torch.cat([pad(getattr(p, name), value, p) for p in parts])

        samples = {p.samples for p in parts}
        if len(samples) > 1:
            raise ValueError(f"sampled batches disagree on the draws per position: {sorted(samples)}")
        return cls(
            ids=field("ids", 0),
            logprobs=field("logprobs", float("-inf")),
            token_logprobs=field("token_logprobs", 0.0),
            tail=field("tail", 0.0),
            mask=field("mask", False),
            counts=field("counts", 0) if parts[0].is_sampled else None,
            samples=samples.pop(),
        )

    @classmethod
    def from_results(
        cls,
        results: Sequence[SequenceLogits],
        starts: Sequence[int],
        seq_len: int,
        k: int | None = None,
    ) -> TeacherLogits:
        """Pad a batch of service results into tensors aligned with student logits of length `seq_len`.

        Row r of `results[b]` is position i = starts[b] + r, stored at index starts[b] + r - 1. `k` is the
        padded row width (default: the longest row). A narrower `k` keeps each row's most likely ids: in
        "topk" mode the dropped mass is folded into `tail`; "sample" mode cannot drop draws and raises.
        """
        if len(results) != len(starts):
            raise ValueError(
                f"got {len(results)} results but {len(starts)} starts; pass one start per result"
            )
        sampled = {r.counts is not None for r in results}
        if len(sampled) > 1:
            raise ValueError("results mix 'topk' and 'sample' mode; request one mode per batch")
        is_sampled = sampled == {True}
        widest = max((int(r.row_lengths.max(initial=0)) for r in results), default=0)
        width = widest if k is None else k
        if width < 0 or (is_sampled and width < widest):
            raise ValueError(
                f"k={k} is narrower than the longest sampled row ({widest}); 'sample' mode rows cannot be "
                "truncated without breaking their counts — pass k=None or k >= the longest row"
            )
        b = len(results)
        ids = np.zeros((b, seq_len, width), dtype=np.int64)
        logprobs = np.full((b, seq_len, width), -np.inf, dtype=np.float32)
        token_logprobs = np.zeros((b, seq_len), dtype=np.float32)
        tail = np.zeros((b, seq_len), dtype=np.float32)
        mask = np.zeros((b, seq_len), dtype=bool)
        counts = np.zeros((b, seq_len, width), dtype=np.int32) if is_sampled else None
        draws: set[int] = set()
        for index, (result, start) in enumerate(zip(results, starts, strict=True)):
            rows = result.num_rows
            if start < 1:
                raise ValueError(f"starts[{index}] = {start}: the first position with a teacher row is 1")
            if start + rows > seq_len:
                raise ValueError(
                    f"results[{index}] covers positions [{start}, {start + rows}) of a sequence of "
                    f"{start + rows} tokens, but the student input holds seq_len={seq_len}; pad the student "
                    f"batch to >= {start + rows}"
                )
            row_ids, row_logprobs, row_counts = result.dense()
            row_tail = result.tail_logprobs.astype(np.float64)
            if row_ids.shape[1] > width:  # "topk" only (checked above): fold the dropped mass into the tail
                dropped = row_logprobs[:, width:].astype(np.float64)
                row_tail = np.logaddexp(row_tail, _logsumexp(dropped))
            keep = min(width, row_ids.shape[1])
            span = slice(start - 1, start - 1 + rows)
            ids[index, span, :keep] = row_ids[:, :keep]
            logprobs[index, span, :keep] = row_logprobs[:, :keep]
            token_logprobs[index, span] = result.token_logprobs
            tail[index, span] = row_tail
            mask[index, span] = True
            if counts is not None and row_counts is not None:
                counts[index, span, :keep] = row_counts[:, :keep]
                draws.update(np.unique(row_counts.sum(-1)).tolist())
        if len(draws) > 1:
            raise ValueError(f"sampled rows disagree on the number of draws per position: {sorted(draws)}")
        samples = (draws.pop() if draws else 1) if is_sampled else None
        return cls(
            ids=torch.from_numpy(ids),
            logprobs=torch.from_numpy(logprobs),
            token_logprobs=torch.from_numpy(token_logprobs),
            tail=torch.from_numpy(tail),
            mask=torch.from_numpy(mask),
            counts=None if counts is None else torch.from_numpy(counts),
            samples=samples,
        )


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise log(sum(exp(x))) over the last axis; -inf for rows that are all -inf."""
    top = x.max(axis=-1, initial=-np.inf)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return safe + np.log(np.exp(x - safe[..., None]).sum(-1))
