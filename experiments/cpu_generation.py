"""Why the demo uses one torch thread per process and big generate batches: CPU generation timings.

    .venv/bin/python experiments/cpu_generation.py [--model DIR] [--tokens 32] [--repeats 2] [--busy N]

Samples `--tokens` new tokens from SmolLM2-135M-Instruct (the prepared teacher) for batches of 2, 4 and
16 identical chat prompts, with 1 and with 2 intra-op threads, and prints the best of `--repeats` wall
times per setting as a markdown table (docs/demo.md quotes it). `--busy N` runs N CPU-bound processes
(spinning Python loops) meanwhile, as the demo's other busy process (service or trainer) does. A decoding
step reads every weight once whatever the batch, so small batches cost about the same; on a busy machine
a second OpenMP thread that gets descheduled can make every step wait for it.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF directory (default: the prepared SmolLM2)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes running meanwhile")
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.model is None:
        from dualdistill_server.models.prepare import prepare_smollm2

        args.model = prepare_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": "Tom has 4 pencils and gets 5 more. How many pencils does Tom have now? "
                 "Answer with a single number."}]  # fmt: skip
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    prompt = prompt if isinstance(prompt, torch.Tensor) else prompt["input_ids"]
    print(f"machine: {platform.platform()}, {len(os.sched_getaffinity(0))} CPUs, load {os.getloadavg()}, "
          f"busy processes {args.busy}")  # fmt: skip
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        measure(model, tokenizer, prompt, args.tokens, args.repeats)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    print(f"load after: {os.getloadavg()}")


def measure(model, tokenizer, prompt, tokens: int, repeats: int) -> None:
    import torch

    print(f"| threads | rows | seconds for {tokens} tokens (best of {repeats}) |\n|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for rows in (2, 4, 16):
            ids = prompt.repeat(rows, 1)
            best = float("inf")
            for _ in range(repeats):
                began = time.perf_counter()
                with torch.inference_mode():
                    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                   min_new_tokens=tokens, do_sample=True, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
                best = min(best, time.perf_counter() - began)
            print(f"| {threads} | {rows} | {best:.1f} |", flush=True)


if __name__ == "__main__":
    main()
