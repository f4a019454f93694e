"""Seconds per optimizer step of a study run, measured on this machine, to estimate the study's wall time.

    .venv/bin/python experiments/quality/step_cost.py [--student runs/quality/data/student-sft] [--steps 4]

One step as the study trains it: batch_size pairs of the study's lengths (the chat-templated prompt of the
`double` task, responses of max_new_tokens), the fused DPD loss with teacher top-k rows (random rows of
the right shape: the cost does not depend on their values), backward, AdamW. Prints the median over steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from experiments.quality.config import study_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, default=ROOT / "runs" / "quality" / "data" / "student-sft")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=45)
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM

    from dualdistill.losses import DPDBatch, DPDLossConfig, fused_dpd_loss
    from dualdistill.teacher_logits import TeacherLogits

    config = study_config("cpu")
    torch.set_num_threads(config.threads)
    model = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, p, r, k = config.batch_size, args.prompt_tokens, config.max_new_tokens, config.top_k
    length, vocab = p + r, model.config.vocab_size
    ids = torch.randint(0, vocab, (2 * b, length))
    labels = torch.full((2 * b, length), -100)
    labels[:, p - 1 : length - 1] = ids[:, p:]
    mask = labels >= 0
    rows = torch.log_softmax(torch.randn(2 * b, length, k + 1), -1)
    teacher = TeacherLogits(ids=torch.randint(0, vocab, (2 * b, length, k)), logprobs=rows[..., :k],
                            token_logprobs=rows[..., 0], tail=rows[..., k], mask=mask)  # fmt: skip
    batch = DPDBatch(labels, mask, teacher, ref_logps=torch.zeros(2 * b))
    head = model.get_output_embeddings()
    seconds = []
    for _ in range(args.steps):
        began = time.perf_counter()
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state
        fused_dpd_loss(hidden, head.weight, head.bias, batch, DPDLossConfig()).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - began)
    median = statistics.median(seconds)
    print(f"{b} pairs x {length} tokens, {model.config.num_hidden_layers} layers: median {median:.2f} s per step "
          f"over {args.steps} steps ({', '.join(f'{s:.2f}' for s in seconds)}); {config.steps} steps = "
          f"{median * config.steps / 60:.1f} min per run")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
