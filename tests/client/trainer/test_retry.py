"""A teacher killed (SIGKILL) mid-run and restarted on the same ports: the run pauses, retries, and
finishes with every training pair used exactly once in the epoch — nothing skipped, nothing repeated."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from dualdistill.trainer import train
from tests.client.trainer.fixtures import small_config, train_records
from tests.fixtures.server_process import start_server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_teacher_restart_mid_run_skips_no_batch(tmp_path, monkeypatch, tiny_model_dir, student_dir, pair_files):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the server subprocess: tiny model, busy shared cores
    ports = ("--http-port", str(_free_port()), "--grpc-port", str(_free_port()), "--log-level", "warning")
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(start_server({"tiny": tiny_model_dir}, *ports))
        restarted = threading.Event()
        restarter: list[threading.Thread] = []

        def kill_and_restart(step, record):
            if step == 2:  # the prefetcher has requests for the next micro-batches in flight or queued
                first.process.kill()
                first.process.wait()

                def restart():
                    time.sleep(0.5)
                    stack.enter_context(start_server({"tiny": tiny_model_dir}, *ports))
                    restarted.set()

                restarter.append(threading.Thread(target=restart, daemon=True))
                restarter[0].start()

        url = f"grpc://{first.grpc_target}"  # gRPC here; the other live tests use HTTP
        config = small_config(tmp_path / "run", student_dir, pair_files[0], url,
                              teacher_retries=1000, teacher_max_backoff=0.5, prefetch_depth=2)  # fmt: skip
        result = train(config, on_step=kill_and_restart)
        restarter[0].join()
    assert restarted.is_set()
    records = train_records(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # 12 pairs, batch 2, one epoch
    used = [pair_id for r in records for ids in r["example_ids"] for pair_id in ids]
    assert sorted(used) == sorted(f"train-{i}" for i in range(12))  # each exactly once
    assert records[-1]["teacher_retries"] >= 1  # it did lose the teacher and retried
    assert result.final_step == 6
