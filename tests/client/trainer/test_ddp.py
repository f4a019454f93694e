"""DDP on CPU: `torchrun --nproc_per_node 2` (gloo) against the served tiny teacher. Each rank trains on
its own shard, the shards are disjoint and cover the epoch once, and both ranks end with identical weights."""

from __future__ import annotations

from dualdistill.trainer.logs import read_metrics
from tests.client.trainer.fixtures import TEACHER, TOP_K, torchrun_train


def test_two_cpu_ranks_train_disjoint_shards_to_identical_weights(tmp_path, tiny_server, student_dir, pair_files):
    train_pairs, eval_pairs = pair_files
    out = tmp_path / "ddp"
    settings = {
        "teacher_model": TEACHER, "reference": f"served:{TEACHER}", "top_k": TOP_K, "batch_size": 2,
        "learning_rate": 3e-3, "device": "cpu", "progress": "false", "plots": "true",
        "eval_pairs": str(eval_pairs), "eval_every": 2, "eval_max_new_tokens": 4, "save_every": 2,
    }  # fmt: skip
    torchrun_train(tiny_server.http_url, train_pairs, student_dir, out, settings)

    records = read_metrics(out)
    steps = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3]  # 12 pairs / (2 per rank x 2 ranks)
    per_rank = [[i for r in steps for i in r["example_ids"][rank]] for rank in (0, 1)]
    assert all(len(r["example_ids"][rank]) == 2 for r in steps for rank in (0, 1))
    assert not set(per_rank[0]) & set(per_rank[1])  # disjoint shards
    assert sorted(per_rank[0] + per_rank[1]) == sorted(f"train-{i}" for i in range(12))  # the epoch, once
    end = [r for r in records if r.get("event") == "end"][-1]
    assert len(end["weights_sha256"]) == 2 and end["weights_sha256"][0] == end["weights_sha256"][1]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 3]  # rank 0 evaluates while rank 1 waits at the barrier
    assert {"eval/kl_pos", "eval/pref_acc", "eval/reward_margin", "eval/verifier_acc"} <= set(evals[-1])
    assert (out / "plots" / "losses.png").exists() and (out / "plots" / "eval.png").exists()
    final = out / "checkpoints" / "step-000003"
    assert (final / "rng-rank0.pt").exists() and (final / "rng-rank1.pt").exists()
