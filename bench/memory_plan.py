"""Expected memory per GPU of a DPD training step, DDP vs FSDP2, for 1B / 3B / 8B students: arithmetic,
not a measurement (the measured counterpart on CPU is bench/fsdp_memory.py).

    python bench/memory_plan.py [--gpus 8] [--tokens 8192] [--pairs 1]

Per GPU, N GPUs, P parameters, one layer of P_l parameters, vocabulary V, hidden H, n_l layers, T tokens
per side, 1 pair per GPU (2T rows):
    DDP        16 P (fp32 weights, gradients, AdamW m and v) + 4 P (DDP's gradient buckets)
    FSDP2      16 P / N (the same state, sharded) + 2 x 2 P_l x 2 (two bf16 layers gathered: the running one
               and the prefetched one, with their bf16 gradients) + the root group gathered (embeddings
               and LM head, bf16 weights + fp32 gradients: 6 bytes per parameter)
    activations with activation_checkpointing: every layer's bf16 input (2 x 2T x H x n_l) + one layer's
               recomputed internals, ~ 34 bytes x 2T x H (Korthikanti et al. 2022, flash attention)
    loss       fused: one [chunk, V] fp32 buffer (fused_chunk_mib) + the LM head's fp32 gradient (4 V H) +
               the hidden states' gradient (4 x 2T x H); unfused: the (2T, V) fp32 logits and their gradient
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class Student:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @property
    def layer_params(self) -> int:
        head_dim = self.hidden // self.heads
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_heads * head_dim
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def root_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.root_params


# public architectures (config.json of each model family): Llama-3.2-1B, Qwen2.5-3B, Llama-3.1-8B
STUDENTS = (
    Student("1B (Llama-3.2-1B shape)", 16, 2048, 8192, 32, 8, 128256, True),
    Student("3B (Qwen2.5-3B shape)", 36, 2048, 11008, 16, 2, 151936, True),
    Student("8B (Llama-3.1-8B shape)", 32, 4096, 14336, 32, 8, 128256, False),
)


def plan(s: Student, gpus: int, tokens: int, chunk_mib: float = 64.0) -> dict[str, float]:
    rows = 2 * tokens
    activations = 2 * rows * s.hidden * s.layers + 34 * rows * s.hidden
    fused = chunk_mib * 2**20 + 4 * s.vocab * s.hidden + 4 * rows * s.hidden
    unfused = 2 * 4 * rows * s.vocab
    ddp_state = 16 * s.params + 4 * s.params
    fsdp_state = 16 * s.params / gpus + 2 * 2 * s.layer_params * 2 + 6 * s.root_params
    return {
        "params": s.params,
        "ddp_state": ddp_state,
        "fsdp_state": fsdp_state,
        "activations": activations,
        "fused_loss": fused,
        "unfused_loss": unfused,
        "ddp_total": ddp_state + activations + fused,
        "fsdp_total": fsdp_state + activations + fused,
    }


def table(gpus: int, tokens: int) -> str:
    lines = [
        f"| student | parameters | DDP state | FSDP2 state ({gpus} GPUs) | activations (checkpointed) | "
        "fused loss | unfused logits + grad | DDP total | FSDP2 total |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in STUDENTS:
        p = plan(s, gpus, tokens)
        cells = [f"{p[k] / GIB:.1f} GiB" for k in ("ddp_state", "fsdp_state", "activations", "fused_loss",
                                                    "unfused_loss", "ddp_total", "fsdp_total")]  # fmt: skip
        lines.append(f"| {s.name} | {p['params'] / 1e9:.2f}B | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, default=8, help="GPUs the state is sharded over")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per side of the pair (chosen, rejected)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    print(table(args.gpus, args.tokens))


if __name__ == "__main__":
    main()
