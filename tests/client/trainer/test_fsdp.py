"""FSDP2 on CPU: `torchrun --nproc_per_node 2` (gloo), `--set parallel=fsdp`, teacher rows from a lossless
capture of the served tiny teacher (so that runs are comparable bit for bit).

The sharded run must train the same model as DDP (same data, same losses, weights equal to float32
rounding), write sharded checkpoints (each rank one half of every 2-D weight), export a plain HF
directory at the end, and resume bit for bit on the same world size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dualdistill.trainer.logs import read_metrics
from tests.client.trainer.fixtures import TEACHER, TOP_K, assert_same_weights, load_weights, train_records

ROOT = Path(__file__).resolve().parents[3]


def torchrun(out: Path, capture_dir: Path, student_dir: Path, pairs: Path, *extra: str, **settings) -> None:
    """`dualdistill train` on 2 CPU ranks; fails the test with the output tail when the run fails."""
    base = {
        "teacher_model": TEACHER, "reference": f"served:{TEACHER}", "top_k": TOP_K, "batch_size": 2,
        "learning_rate": 3e-3, "device": "cpu", "progress": "false", "plots": "false", "save_every": 2,
        "keep_checkpoints": 0, "warmup_steps": 0, "min_lr_ratio": 1.0,
    }  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "dualdistill.cli.main", "train", "--teacher-url", f"capture:{capture_dir}",
        "--pairs", str(pairs), "--student", str(student_dir), "--output-dir", str(out), *extra,
    ] + [arg for key, value in {**base, **settings}.items() for arg in ("--set", f"{key}={value}")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALDISTILL_")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "client"), str(ROOT / "server")])}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def shard_rows(checkpoint: Path, name: str) -> list[tuple[int, int]]:
    """(row offset, rows) of each stored chunk of tensor `name` in a checkpoint's DCP metadata."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(checkpoint / "sharded")).read_metadata().state_dict_metadata[name]
    return sorted((c.offsets[0], c.sizes[0]) for c in meta.chunks)


@pytest.fixture(scope="module")
def tied_student_dir(tmp_path_factory, student_dir) -> Path:
    """The test student with its LM head tied to the embeddings, as SmolLM2's and Qwen2.5's are."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(student_dir)
    model.config.tie_word_embeddings = True
    tied = type(model)(model.config)
    tied.load_state_dict(model.state_dict(), strict=False)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    out = tmp_path_factory.mktemp("tied") / "student"
    tied.save_pretrained(out)
    AutoTokenizer.from_pretrained(student_dir).save_pretrained(out)
    return out


def test_fsdp_two_ranks_write_shards_evaluate_and_export_hf(tmp_path, capture_dir, tied_student_dir, pair_files):
    train_pairs, eval_pairs = pair_files
    out, student_dir = tmp_path / "fsdp", tied_student_dir
    torchrun(out, capture_dir, student_dir, train_pairs, parallel="fsdp", eval_pairs=str(eval_pairs),
             eval_every=3, eval_max_new_tokens=4)  # fmt: skip
    steps = train_records(out)
    assert [r["step"] for r in steps] == [1, 2, 3] and all(len(r["example_ids"]) == 2 for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]

    middle, final = (out / "checkpoints" / f"step-00000{s}" for s in (2, 3))
    assert (middle / "sharded" / ".metadata").exists() and not (middle / "model.safetensors").exists()
    state = torch.load(middle / "trainer_state.pt", weights_only=True)
    assert "optimizer" not in state and state["world_size"] == 2  # the optimizer state lives in the shards
    weight = "model.model.layers.0.mlp.gate_proj.weight"  # StudentForward.model -> LlamaForCausalLM ...
    halves = shard_rows(final, f"model.{weight}")
    rows = sum(size for _, size in halves)
    assert halves == [(0, rows // 2), (rows // 2, rows // 2)]  # each rank stored one half
    assert len(shard_rows(final, f"optimizer.state.{weight}.exp_avg")) == 2  # AdamW moments sharded too

    exported, initial = load_weights(final), load_weights(student_dir)  # the plain HF export at the end
    assert exported.keys() == initial.keys() and "lm_head.weight" not in exported  # tied: stored once
    assert not torch.equal(exported[weight[len("model.") :]], initial[weight[len("model.") :]])
    end = [r for r in read_metrics(out) if r.get("event") == "end"][-1]
    assert len(set(end["weights_sha256"])) == 2  # two ranks, two different shards
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]  # every rank ran the sharded model
    assert [r["step"] for r in evals] == [3] and {"eval/kl_pos", "eval/verifier_acc"} <= set(evals[0])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fsdp_trains_the_same_model_as_ddp(tmp_path, capture_dir, student_dir, pair_files):
    """Same data on the same ranks, same losses, final weights equal to float32 rounding."""
    train_pairs, _ = pair_files
    for mode in ("ddp", "fsdp"):
        torchrun(tmp_path / mode, capture_dir, student_dir, train_pairs, parallel=mode)
    ddp, fsdp = train_records(tmp_path / "ddp"), train_records(tmp_path / "fsdp")
    assert [r["example_ids"] for r in fsdp] == [r["example_ids"] for r in ddp]
    for key in ("loss", "dpo", "pos", "neg", "grad_norm"):
        assert [r[key] for r in fsdp] == pytest.approx([r[key] for r in ddp], rel=1e-5, abs=1e-6), key
    final = Path("checkpoints") / "step-000003"
    assert_same_weights(tmp_path / "fsdp" / final, tmp_path / "ddp" / final, atol=1e-5)
    # the options: bf16 gathers (fp32 reduce) and recomputed layers train the same model to bf16 precision
    torchrun(tmp_path / "bf16", capture_dir, student_dir, train_pairs, parallel="fsdp", fsdp_mixed_precision="true",
             activation_checkpointing="true")  # fmt: skip
    bf16 = train_records(tmp_path / "bf16")
    assert [r["example_ids"] for r in bf16] == [r["example_ids"] for r in ddp]
    assert bf16[0]["loss"] == pytest.approx(ddp[0]["loss"], rel=2e-2) and bf16[0]["loss"] != ddp[0]["loss"]
    assert bf16[-1]["loss"] < bf16[0]["loss"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fsdp_resume_is_bit_for_bit(tmp_path, capture_dir, student_dir, pair_files):
    """A run stopped at a sharded checkpoint and resumed ends with exactly the uninterrupted run's weights."""
    train_pairs, _ = pair_files
    args = (capture_dir, student_dir, train_pairs)
    torchrun(tmp_path / "whole", *args, parallel="fsdp", epochs=2, max_steps=5)
    torchrun(tmp_path / "cut", *args, parallel="fsdp", epochs=2, max_steps=2)  # stops at checkpoint 2
    torchrun(tmp_path / "cut", *args, "--resume", parallel="fsdp", epochs=2, max_steps=5)
    final = Path("checkpoints") / "step-000005"
    assert_same_weights(tmp_path / "whole" / final, tmp_path / "cut" / final)
    a, b = train_records(tmp_path / "whole"), train_records(tmp_path / "cut")
    assert [(r["step"], r["loss"], r["example_ids"]) for r in a] == [(r["step"], r["loss"], r["example_ids"]) for r in b]
