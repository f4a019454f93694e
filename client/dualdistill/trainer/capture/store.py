"""The on-disk layout of an offline capture of teacher logits, and its writer and reader.

    DIR/manifest.json        the capture's settings (teacher model, fingerprint, tokenizer hash, top_k, ...)
    DIR/shard-00000.bin      records back to back; a pair's record is one or two payloads of
                             `dualdistill.protocol.wire.encode`: [teacher on chosen, teacher on rejected], then
                             (with a reference model) [reference on chosen, reference on rejected]
    DIR/shard-00000.jsonl    one line per record of that shard: {"id", "digest", "offset", "length", "parts"}
    DIR/index.json           written when the capture is complete: the manifest plus
                             "pairs": {pair id: {"shard", "offset", "length", "parts", "digest"}}

`parts` lists the byte lengths of the record's payloads. A record reuses the service's binary wire
format, so a capture is read with the same codec a live client decodes responses with; teacher and
reference rows are separate payloads, as they are separate responses live (the lossy codec picks its
quantization from the payload's mean row width, so mixing top-k rows with 1-wide rows would change it). Crash safety: a record's bytes are written and flushed before its sidecar line,
so after a crash a rerun keeps every record that has a complete sidecar line, cuts the shard back to the
end of the last such record (dropping a half-written one) and carries on with the pairs not yet done.
`digest` (`dualdistill.trainer.data.pair_digest` of the pair's token lists) lets the trainer refuse a
capture made from different pairs under the same ids.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dualdistill.protocol.params import LogitsParams
from dualdistill.protocol.results import SequenceLogits

FORMAT = "dualdistill-capture"
VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.json"
DEFAULT_SHARD_BYTES = 256 * 1024 * 1024


class CaptureError(RuntimeError):
    """A capture directory that cannot be used as asked (incomplete, other settings, other pairs)."""


@dataclass(frozen=True)
class CaptureSettings:
    """What the logits in a capture mean; a resumed or consuming run must agree with every field."""

    teacher_model: str
    teacher_fingerprint: str
    tokenizer_sha256: str
    vocab_size: int
    params: LogitsParams  # what the rows mean (stored flat in the manifest: top_k, temperature, ...)
    lossless: bool
    reference_model: str | None = None
    reference_fingerprint: str | None = None
    max_seq_len: int | None = None  # sequences were cut to this many tokens; None: uncut

    def to_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        fields.update(fields.pop("params"))
        return {"format": FORMAT, "version": VERSION, **fields}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptureSettings:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise CaptureError(
                f"not a {FORMAT} v{VERSION} manifest (format={data.get('format')!r}, version={data.get('version')!r})"
            )
        names = set(cls.__dataclass_fields__) - {"params"}
        params = LogitsParams(**{k: data[k] for k in LogitsParams.__dataclass_fields__ if k in data})
        return cls(params=params, **{k: v for k, v in data.items() if k in names})

    def differences(self, other: CaptureSettings) -> list[str]:
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} vs {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


def _shard_name(number: int) -> str:
    return f"shard-{number:05d}.bin"


def _read_sidecar(path: Path) -> list[dict[str, Any]]:
    """Complete lines of a sidecar; a trailing partial line (a crash mid-write) is ignored."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        records.append(json.loads(line))
    return records


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class CaptureWriter:
    """Appends pair records to size-capped shards; reopening a directory resumes it (module docstring)."""

    def __init__(self, directory: str | Path, settings: CaptureSettings, shard_bytes: int = DEFAULT_SHARD_BYTES):
        if shard_bytes < 1:
            raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.shard_bytes = shard_bytes
        manifest = self.directory / MANIFEST
        if manifest.exists():
            existing = CaptureSettings.from_dict(json.loads(manifest.read_text(encoding="utf-8")))
            diffs = existing.differences(settings)
            if diffs:
                raise CaptureError(
                    f"{self.directory} holds a capture made with other settings ({'; '.join(diffs)}); "
                    "resume with the same settings or capture into a new directory"
                )
        else:
            _write_json_atomic(manifest, settings.to_dict())
        self.entries: dict[str, dict[str, Any]] = {}
        self._shard = 0
        for number in self._shard_numbers():
            self._shard = number
            records = _read_sidecar(self._sidecar(number))
            for record in records:
                self.entries[record["id"]] = {"shard": _shard_name(number), **record}
            end = max((r["offset"] + r["length"] for r in records), default=0)
            with open(self.directory / _shard_name(number), "ab") as handle:
                handle.truncate(end)  # drop bytes of a record whose sidecar line never made it
            if self._sidecar(number).exists():
                with open(self._sidecar(number), "r+b") as handle:
                    text = handle.read()
                    handle.truncate(text.rfind(b"\n") + 1)  # drop a partial trailing line
        self._data = open(self.directory / _shard_name(self._shard), "ab")  # noqa: SIM115 - closed in close()
        self._index = open(self._sidecar(self._shard), "a", encoding="utf-8")  # noqa: SIM115

    def _shard_numbers(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("shard-*.bin"))

    def _sidecar(self, number: int) -> Path:
        return self.directory / f"shard-{number:05d}.jsonl"

    @property
    def done(self) -> set[str]:
        return set(self.entries)

    def add(self, pair_id: str, digest: str, payloads: Sequence[bytes]) -> None:
        """Append one pair's record: its encoded payloads (`dualdistill.protocol.wire.encode`), in order."""
        if pair_id in self.entries:
            raise CaptureError(f"pair {pair_id!r} is already in the capture")
        parts = [len(p) for p in payloads]
        payload = b"".join(payloads)
        offset = self._data.tell()
        if offset > 0 and offset + len(payload) > self.shard_bytes:
            self._roll()
            offset = 0
        self._data.write(payload)
        self._data.flush()
        record = {"id": pair_id, "digest": digest, "offset": offset, "length": len(payload), "parts": parts}
        self._index.write(json.dumps(record) + "\n")
        self._index.flush()
        self.entries[pair_id] = {"shard": _shard_name(self._shard), **record}

    def _roll(self) -> None:
        self._data.close()
        self._index.close()
        self._shard += 1
        self._data = open(self.directory / _shard_name(self._shard), "ab")  # noqa: SIM115
        self._index = open(self._sidecar(self._shard), "a", encoding="utf-8")  # noqa: SIM115

    def finish(self) -> Path:
        """Write index.json (the capture is then complete and usable by `dualdistill train`)."""
        for handle in (self._data, self._index):
            handle.flush()
            os.fsync(handle.fileno())
        pairs = {
            pid: {k: e[k] for k in ("shard", "offset", "length", "parts", "digest")}
            for pid, e in self.entries.items()
        }
        path = self.directory / INDEX
        _write_json_atomic(path, {**self.settings.to_dict(), "num_pairs": len(pairs), "pairs": pairs})
        return path

    def close(self) -> None:
        self._data.close()
        self._index.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class CaptureReader:
    """Random access to a complete capture's records by pair id; thread-safe (positional reads)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / INDEX
        if not path.exists():
            hint = " (a capture was started there but not finished)" if (self.directory / MANIFEST).exists() else ""
            raise CaptureError(
                f"{path} does not exist{hint}; run `dualdistill capture --out {self.directory}` to (re)complete it"
            )
        index = json.loads(path.read_text(encoding="utf-8"))
        self.settings = CaptureSettings.from_dict(index)
        self.pairs: dict[str, dict[str, Any]] = index["pairs"]
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.pairs)

    def __contains__(self, pair_id: str) -> bool:
        return pair_id in self.pairs

    def _fd(self, shard: str) -> int:
        with self._lock:
            if shard not in self._fds:
                self._fds[shard] = os.open(self.directory / shard, os.O_RDONLY)
            return self._fds[shard]

    def payloads(self, pair_id: str, digest: str | None = None) -> list[bytes]:
        entry = self.pairs.get(pair_id)
        if entry is None:
            raise CaptureError(
                f"pair {pair_id!r} is not in the capture {self.directory}; capture the same pairs file you train on"
            )
        if digest is not None and entry["digest"] != digest:
            raise CaptureError(
                f"pair {pair_id!r} in the capture {self.directory} has other token ids than the pairs file "
                "(digest mismatch); recapture from this pairs file"
            )
        data = os.pread(self._fd(entry["shard"]), entry["length"], entry["offset"])
        if len(data) != entry["length"] or sum(entry["parts"]) != entry["length"]:
            raise CaptureError(f"{self.directory / entry['shard']} is truncated at pair {pair_id!r}")
        ends = list(itertools.accumulate(entry["parts"]))
        return [data[end - size : end] for end, size in zip(ends, entry["parts"], strict=True)]

    def get(self, pair_id: str, digest: str | None = None) -> list[SequenceLogits]:
        """The pair's results: [chosen, rejected] (+ [reference chosen, reference rejected])."""
        from dualdistill.protocol import wire

        return [result for payload in self.payloads(pair_id, digest) for result in wire.decode(payload)]

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def take_rows(result: SequenceLogits, rows: int) -> SequenceLogits:
    """The first `rows` positions of a result (exact: row i depends on x[:i] only, never on later tokens)."""
    if rows > result.num_rows:
        raise ValueError(f"asked for {rows} rows of a result that has {result.num_rows}")
    if rows == result.num_rows:
        return result
    end = int(result.row_offsets[rows])
    return SequenceLogits(
        row_lengths=result.row_lengths[:rows],
        top_ids=result.top_ids[:end],
        top_logprobs=result.top_logprobs[:end],
        token_logprobs=result.token_logprobs[:rows],
        tail_logprobs=result.tail_logprobs[:rows],
        counts=None if result.counts is None else result.counts[:end],
    )
