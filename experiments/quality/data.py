"""The study's data, made once and cached under RUNS/data (every step is skipped when its output exists).

    models     teacher (SmolLM2-135M-Instruct unless given) and the student-init (teacher pruned)
    sft        teacher samples on the `sft` queries -> student-sft (the init of every run, the reference)
    prompts    the teacher's (service) and student-sft's greedy answers to the val and test queries: their
               accuracies, and the chat-templated prompt ids every model answers from
    pairs      service(teacher + reference = student-sft), `dualdistill pairs` with the task's 0/1 verifier:
                 train.jsonl       best-of-n teacher sample vs worst student sample, margin 1: a kept pair
                                   has a right positive and a wrong negative
                 test-pairs.jsonl  the same filter on the test queries (preference accuracy, reward margin)
                 test-samples.jsonl  one random teacher sample and one random student sample per test query,
                                   unfiltered (KL on the teacher's region and on the student's own)
    capture    the teacher's and the reference's rows of all three files, lossless top-k

The query splits (sft, train, val, test) are streams of the task with their own seeds: disjoint.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from experiments.quality.config import StudyConfig

SPLIT_SEEDS = {"sft": 10_000, "train": 20_000, "val": 30_000, "test": 40_000}
TEACHER, REFERENCE = "teacher", "reference"
GENERATE_TIMEOUT = 1800.0


@dataclass
class StudyData:
    teacher_dir: Path
    sft_dir: Path
    train_pairs: Path
    test_pairs: Path
    test_samples: Path
    capture_dir: Path
    prompts: dict  # {"val": {"queries", "prompt_ids", "teacher_answers"}, "test": {...}}
    pair_summaries: dict  # file -> keep / drop summary


def queries(config: StudyConfig, split: str) -> list[dict]:
    from dualdistill.tasks.registry import make_queries

    count = {"sft": config.sft_queries, "train": config.train_queries, "val": config.val_queries,
             "test": config.test_queries}[split]  # fmt: skip
    return make_queries(config.task, count, seed=SPLIT_SEEDS[split] + config.data_seed)


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value) + "\n")
    os.replace(tmp, path)


def _models(config: StudyConfig, root: Path, teacher_dir: Path | None, student_dir: Path | None) -> tuple[Path, Path]:
    from dualdistill_server.models.prepare import is_complete, prepare_smollm2
    from dualdistill_server.models.prune import prune_layers

    teacher = Path(teacher_dir) if teacher_dir else prepare_smollm2()
    if student_dir:
        return teacher, Path(student_dir)
    out = root / f"student-init-every{config.keep_every}"
    if not is_complete(out):
        prune_layers(teacher, out, keep=config.keep_every, force=True)
    return teacher, out


def _sft(config: StudyConfig, root: Path, teacher: Path, student_init: Path, log: Path) -> Path:
    from dualdistill.client import TeacherClient
    from dualdistill.demo.service import run_service
    from dualdistill.trainer.sft import SFTExample, is_complete, sft

    out = root / "student-sft"
    if is_complete(out):
        return out
    data_path = root / "sft-data.jsonl"
    if not data_path.is_file():
        records = []
        with run_service({TEACHER: teacher}, log_path=log, extra_args=["--log-level", "warning", "--device",
                         config.device], threads=config.threads) as service, \
                TeacherClient(service.http_url, timeout=GENERATE_TIMEOUT) as client:  # fmt: skip
            todo = queries(config, "sft")
            for begin in range(0, len(todo), 16):
                part = todo[begin : begin + 16]
                for c in client.generate(TEACHER, [{"messages": q["messages"]} for q in part],
                                         max_new_tokens=config.max_new_tokens, temperature=config.sft_temperature,
                                         n=1, seed=config.data_seed + begin):  # fmt: skip
                    if c.token_ids:
                        records.append({"prompt_token_ids": list(c.prompt_token_ids), "token_ids": list(c.token_ids),
                                        "text": c.text})  # fmt: skip
                print(f"sft data: {min(begin + 16, len(todo))}/{len(todo)} queries", flush=True)
        data_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    examples = [SFTExample.from_record(json.loads(line)) for line in data_path.open() if line.strip()]
    result = sft(student_init, examples, out, steps=config.sft_steps, lr=config.sft_lr, seed=config.data_seed,
                 batch_size=config.sft_batch_size, progress=False)  # fmt: skip
    print(f"SFT: loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f} in {result.wall_seconds:.0f} s", flush=True)
    return out


def _pairs(config: StudyConfig, url: str, split: str, out: Path, filtered: bool) -> dict:
    from dualdistill.pairs import PairsConfig, run_pairs
    from dualdistill.tasks.registry import verifier_spec

    summary_path = out.with_name(out.stem + ".summary.json")
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() and out.is_file() else {}
    if summary.get("total") != len(queries(config, split)):  # no summary, or one of an interrupted run
        # filtered: best-of-n teacher vs worst student, kept iff right (1) - wrong (0) >= pair_margin (1);
        # unfiltered: one random sample per side, every query kept (margin -inf)
        pairs_config = PairsConfig(
            teacher_model=TEACHER, student_model=REFERENCE, samples=config.pair_samples if filtered else 1,
            scorer=verifier_spec(config.task), margin=config.pair_margin if filtered else -math.inf,
            pick="best-worst" if filtered else "random", concurrency=4, seed=config.data_seed,
            max_new_tokens=config.max_new_tokens, temperature=config.pair_temperature,
        )  # fmt: skip
        todo = queries(config, split)
        if not filtered:  # the same queries as the filtered file: other ids (a capture needs unique ids)
            todo = [{**q, "id": q["id"] + "-sample"} for q in todo]
        summary = run_pairs(todo, out, pairs_config, url=url, timeout=GENERATE_TIMEOUT, progress=False).summary
    kept = {k: summary[k] for k in ("kept", "dropped", "total", "dropped_by_reason") if k in summary}
    print(f"pairs {out.name}: kept {kept.get('kept')} of {kept.get('total')}; dropped {kept.get('dropped_by_reason')}",
          flush=True)  # fmt: skip
    return kept


def _prompts(config: StudyConfig, client, sft_dir: Path, path: Path) -> dict:
    """Per split (val, test): the queries, the chat-templated prompt ids, and the verifier scores of the
    teacher's greedy answers (from the service) and of the SFT student's (in this process)."""
    from dualdistill.study.measure import answers
    from dualdistill.tasks.registry import verifier

    if path.is_file():
        return json.loads(path.read_text())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verify, found = verifier(config.task), {}
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    student = AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.float32).to(config.device).eval()
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    for split in ("val", "test"):
        todo = queries(config, split)
        ids, texts = [], []
        for begin in range(0, len(todo), 16):
            part = todo[begin : begin + 16]
            for c in client.generate(TEACHER, [{"messages": q["messages"]} for q in part],
                                     max_new_tokens=config.max_new_tokens, temperature=0.0, n=1, seed=0):  # fmt: skip
                ids.append(list(c.prompt_token_ids))
                texts.append(c.text)
        sft = answers(student, tokenizer, ids, max_new_tokens=config.max_new_tokens, samples=0, temperature=1.0,
                      seed=0, pad_id=pad).greedy_text  # fmt: skip
        found[split] = {"queries": todo, "prompt_ids": ids, "teacher_answers": texts, "sft_answers": sft,
                        "teacher_scores": [verify(q, a) for q, a in zip(todo, texts, strict=True)],
                        "sft_scores": [verify(q, a) for q, a in zip(todo, sft, strict=True)]}  # fmt: skip
        for who in ("teacher", "sft"):
            scores = found[split][f"{who}_scores"]
            print(f"{who} greedy accuracy on {split}: {sum(scores) / len(scores):.3f} ({len(scores)} queries)",
                  flush=True)  # fmt: skip
    _write_json(path, found)
    return found


def make_data(config: StudyConfig, root: Path, service_factory, teacher_dir: Path | None = None,
              student_dir: Path | None = None) -> tuple[StudyData, object, object]:  # fmt: skip
    """Every data step (cached); returns the data, the service's context manager (entered here: the caller
    keeps the service for the runs' teacher scores and must exit it) and the running service (teacher +
    reference). service_factory(models) -> context manager."""
    from dualdistill.client import TeacherClient
    from dualdistill.protocol.params import LogitsParams
    from dualdistill.trainer.capture.run import capture_pairs

    root.mkdir(parents=True, exist_ok=True)
    teacher, student_init = _models(config, root, teacher_dir, student_dir)
    sft_dir = _sft(config, root, teacher, student_init, root / "service-sft.log")
    service_cm = service_factory({TEACHER: teacher, REFERENCE: sft_dir})
    service = service_cm.__enter__()
    try:
        with TeacherClient(service.http_url, timeout=GENERATE_TIMEOUT) as client:
            prompts = _prompts(config, client, sft_dir, root / "prompts.json")
        files = {"train": root / "train.jsonl", "test-pairs": root / "test-pairs.jsonl",
                 "test-samples": root / "test-samples.jsonl"}  # fmt: skip
        summaries = {
            "train": _pairs(config, service.http_url, "train", files["train"], filtered=True),
            "test-pairs": _pairs(config, service.http_url, "test", files["test-pairs"], filtered=True),
            "test-samples": _pairs(config, service.http_url, "test", files["test-samples"], filtered=False),
        }
        _write_json(root / "pairs-summary.json", summaries)
        if summaries["train"].get("kept", 0) < config.min_train_pairs:
            print(f"WARNING: {summaries['train'].get('kept')} training pairs kept, fewer than the design's "
                  f"{config.min_train_pairs}; raise train_queries", flush=True)  # fmt: skip
        capture_dir = root / "capture"
        with TeacherClient(service.http_url, timeout=GENERATE_TIMEOUT, format="binary-lossless") as client:
            if not (capture_dir / "DONE").is_file():
                capture_pairs(list(files.values()), client, TEACHER, capture_dir,
                              params=LogitsParams(top_k=config.top_k), reference_model=REFERENCE, progress=False)  # fmt: skip
                (capture_dir / "DONE").write_text("complete\n")
    except BaseException:
        service_cm.__exit__(None, None, None)
        raise
    data = StudyData(teacher, sft_dir, files["train"], files["test-pairs"], files["test-samples"], capture_dir,
                     prompts, summaries)  # fmt: skip
    return data, service_cm, service
