"""Which checkable task can the teacher teach? Greedy and sampled accuracy of the teacher and the student.

    .venv/bin/python experiments/task_search.py [--queries 200] [--tasks successor,double,...]

For every candidate task of `dualdistill.tasks.registry` (queries from a seed no study split uses):
the teacher's (SmolLM2-135M-Instruct) greedy accuracy, its sample accuracy and pass@n at the given
temperature (n samples per query, no top-k / top-p truncation), and the greedy accuracy of the student
before any training (the teacher pruned to every `--keep-every`-th layer). The SFT student's accuracy on
the chosen task is measured by experiments/quality_table.py on >= 200 held-out queries (the SFT step
is part of that study). Chat template as the service applies it; batched HF generation on the CPU.
Output: experiments/results/task_search.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEARCH_SEED = 90_000  # no study split uses this query stream


def prompt_ids(tokenizer, queries: list[dict]) -> list[list[int]]:
    out = []
    for q in queries:
        ids = tokenizer.apply_chat_template(q["messages"], add_generation_prompt=True)
        out.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
    return out


def measure(model, tokenizer, task: str, queries: list[dict], args, samples: int) -> dict:
    from dualdistill.study.estimators import pass_at_k
    from dualdistill.study.measure import answers
    from dualdistill.tasks.registry import verifier

    verify = verifier(task)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    began = time.perf_counter()
    found = answers(model, tokenizer, prompt_ids(tokenizer, queries), max_new_tokens=args.max_new_tokens,
                    samples=samples, temperature=args.temperature, seed=0, batch_size=args.batch_size, pad_id=pad)  # fmt: skip
    greedy = np.array([verify(q, a) for q, a in zip(queries, found.greedy_text, strict=True)])
    row = {"greedy_acc": float(greedy.mean()), "greedy_tokens": float(np.mean([len(g) for g in found.greedy_ids])),
           "example": found.greedy_text[0]}  # fmt: skip
    if samples:
        right = np.array([[verify(q, s) for s in ss] for q, ss in zip(queries, found.sample_text, strict=True)])
        row["sample_acc"] = float(right.mean())
        row[f"pass@{samples}"] = float(np.mean([pass_at_k(samples, int(c), samples) for c in right.sum(1)]))
    row["seconds"] = time.perf_counter() - began
    return row


def main(argv: list[str] | None = None) -> int:
    from dualdistill.tasks.registry import TASK_NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--tasks", default=",".join(t for t in TASK_NAMES if t not in ("arithmetic-d2", "arithmetic-d3")))
    parser.add_argument("--samples", type=int, default=0, help="teacher samples per query (0: greedy only)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--keep-every", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared machine")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "task_search")
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dualdistill.tasks.registry import make_queries
    from dualdistill_server.models.prepare import is_complete, prepare_smollm2
    from dualdistill_server.models.prune import prune_layers

    torch.set_num_threads(args.threads)
    teacher_dir = prepare_smollm2()
    student_dir = ROOT / "runs" / "task_search" / f"student-every{args.keep_every}"
    if not is_complete(student_dir):
        prune_layers(teacher_dir, student_dir, keep=args.keep_every, force=True)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    json_path = args.out.with_suffix(".json")
    saved = json.loads(json_path.read_text()) if json_path.is_file() else {}
    rows: dict[str, dict] = saved.get("tasks", {})  # tasks measured earlier (same settings) are kept
    began = time.perf_counter()
    for task in args.tasks.split(","):
        if task in rows:
            continue
        queries = make_queries(task, args.queries, seed=SEARCH_SEED)
        rows[task] = {"teacher": measure(teacher, tokenizer, task, queries, args, args.samples),
                      "student_init": measure(student, tokenizer, task, queries, args, 0)}  # fmt: skip
        print(task, json.dumps(rows[task]), flush=True)
        facts = {"command": " ".join(["python", *sys.argv]), "queries": args.queries, "samples": args.samples,
                 "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                 "keep_every": args.keep_every, "teacher": str(teacher_dir), "threads": args.threads,
                 "wall_seconds": saved.get("wall_seconds", 0.0) + time.perf_counter() - began, "tasks": rows}  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(facts, indent=2) + "\n")  # after every task: a stopped search keeps its rows
        write_table(args, rows)
    return 0


def write_table(args, rows: dict[str, dict]) -> None:
    k = f"pass@{args.samples}"
    sampled = f" teacher sample acc (T={args.temperature}) | teacher {k} |" if args.samples else ""
    lines = [f"| task | teacher greedy acc |{sampled} student-init greedy acc | teacher greedy answer tokens | "
             "example teacher answer |", "|---|---:|" + ("---:|---:|" if args.samples else "") + "---:|---:|---|"]  # fmt: skip
    for task, r in rows.items():
        t, s = r["teacher"], r["student_init"]
        example = t["example"].replace("|", "/").replace("\n", " ")[:60]
        cells = f" {t['sample_acc']:.3f} | {t[k]:.3f} |" if args.samples else ""
        lines.append(f"| {task} | {t['greedy_acc']:.3f} |{cells} {s['greedy_acc']:.3f} | {t['greedy_tokens']:.1f} "
                     f"| {example} |")  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
