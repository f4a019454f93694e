"""`capture_pairs`: fetch the teacher's rows for every pair once and store them (`capture.store` layout).

For each pair the teacher scores [chosen, rejected] exactly as a live training run asks for them (same
sequences, starts, top_k, temperature, mode, samples, seed) and, with a reference model, that model's
top_k=1 rows (only their token_logprobs are used). Requests go out `depth` at a time through the
Prefetcher while earlier answers are written. The client should fetch losslessly (format
"binary-lossless" or "json"); `lossless` then decides the codec of the stored records, so a lossy capture
holds exactly what a live client using format "binary" decodes.

A rerun into the same directory skips the pairs already stored (checking that their token ids did not
change) and finishes the rest; `index.json` appears only when every pair is stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualdistill.prefetch import Prefetcher
from dualdistill.protocol.params import LogitsParams
from dualdistill.trainer.capture.store import (
    DEFAULT_SHARD_BYTES,
    CaptureError,
    CaptureSettings,
    CaptureWriter,
)
from dualdistill.trainer.data import PairExample, load_pairs
from dualdistill.trainer.teacher import REFERENCE_PARAMS, sequences_of

UNCUT = 1 << 30  # "no max_seq_len": longer than any sequence a server accepts


@dataclass(frozen=True)
class CaptureSummary:
    directory: Path
    total: int  # pairs in the pairs file
    captured: int  # stored by this call
    already: int  # found stored by an earlier call
    index: Path


def capture_pairs(
    pairs: str | Path | Sequence[str | Path],
    client: Any,
    teacher_model: str,
    out: str | Path,
    *,
    params: LogitsParams = LogitsParams(),  # noqa: B008 (frozen, so one shared default is safe)
    reference_model: str | None = None,
    lossless: bool = True,
    batch_size: int = 8,
    depth: int = 2,
    max_seq_len: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
) -> CaptureSummary:
    """Capture every pair of `pairs` (one file, or several: e.g. train and eval pairs, ids unique over all)
    into `out` (resumable); see the module docstring."""
    from dualdistill.protocol import wire

    if batch_size < 1 or depth < 1:
        raise ValueError(f"batch_size and depth must be >= 1, got {batch_size} and {depth}")
    teacher = client.model_info(teacher_model)
    reference = client.model_info(reference_model) if reference_model is not None else None
    settings = CaptureSettings(
        teacher_model=teacher_model,
        teacher_fingerprint=teacher.fingerprint,
        tokenizer_sha256=teacher.tokenizer_sha256,
        vocab_size=teacher.vocab_size,
        params=params,
        lossless=lossless,
        reference_model=reference_model,
        reference_fingerprint=reference.fingerprint if reference is not None else None,
        max_seq_len=max_seq_len,
    )
    files = [pairs] if isinstance(pairs, str | Path) else list(pairs)
    examples = [e for path in files for e in load_pairs(path, max_seq_len or UNCUT)]
    duplicates = sorted(pid for pid, n in Counter(e.id for e in examples).items() if n > 1)
    if duplicates:
        raise CaptureError(f"pair ids must be unique over all pairs files; repeated: {duplicates[:5]}")
    with CaptureWriter(out, settings, shard_bytes) as writer:
        already = _check_done(examples, writer)
        todo = [e for e in examples if e.id not in writer.entries]

        def fetch(batch: Sequence[PairExample]) -> list[list[bytes]]:
            sequences, starts = sequences_of(batch)
            results = client.logits(teacher_model, sequences, starts, params)
            refs = client.logits(reference_model, sequences, starts, REFERENCE_PARAMS) if reference_model else None
            b = len(batch)
            records = []
            for i in range(b):
                # two payloads, as live: teacher rows and reference rows are separate responses there
                record = [wire.encode([results[i], results[b + i]], lossless=lossless)]
                if refs is not None:
                    record.append(wire.encode([refs[i], refs[b + i]], lossless=lossless))
                records.append(record)
            return records

        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        bar = _bar(progress, len(examples), already)
        try:
            for batch, records in Prefetcher(fetch, batches, depth=depth):
                for example, record in zip(batch, records, strict=True):
                    writer.add(example.id, example.digest, record)
                bar.update(len(batch))
        finally:
            bar.close()
        index = writer.finish()
    return CaptureSummary(Path(out), len(examples), len(todo), already, index)


def _check_done(examples: list[PairExample], writer: CaptureWriter) -> int:
    """Count pairs stored by an earlier call; refuse if one of them now has other token ids."""
    wanted = {e.id: e.digest for e in examples}
    for pair_id, entry in writer.entries.items():
        if pair_id in wanted and entry["digest"] != wanted[pair_id]:
            raise CaptureError(
                f"pair {pair_id!r} is stored in {writer.directory} with other token ids than in the pairs file; "
                "capture into a new directory"
            )
    return sum(1 for pair_id in wanted if pair_id in writer.entries)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="capture", unit="pair", dynamic_ncols=True)
