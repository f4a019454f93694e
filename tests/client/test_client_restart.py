"""A teacher killed mid-run and started again on the same ports: calls made while it is down succeed
once it is back (retries with backoff), on both transports, with the same results as before."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from dualdistill.client import RetryPolicy, TeacherClient
from tests.client.test_client_process import TeacherProcess
from tests.fixtures.tiny_model import build_tiny_model

MODEL = "tiny"
SEQUENCES, STARTS = [[5, 17, 33, 60, 7], [3, 4, 5]], [2, 1]
# Patient enough for a cold start of the server (imports + model load) on a busy machine.
PATIENT = RetryPolicy(max_attempts=2000, initial_backoff=0.05, max_backoff=0.5)


def test_calls_survive_a_teacher_restart(tmp_path):
    teacher = TeacherProcess({MODEL: build_tiny_model(tmp_path / "tiny")}).start()
    clients = {t: TeacherClient(teacher.url(t), timeout=10, retries=PATIENT) for t in ("http", "grpc")}
    try:
        # Warm: pooled HTTP connections and a connected gRPC channel, both about to go stale.
        before = {t: c.logits(MODEL, SEQUENCES, STARTS, top_k=5) for t, c in clients.items()}
        teacher.kill()
        down_for = 1.0
        restarter = threading.Thread(target=lambda: (time.sleep(down_for), teacher.start(wait=False)))
        began = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            restarter.start()
            futures = {
                t: pool.submit(c.logits, MODEL, SEQUENCES, STARTS, top_k=5) for t, c in clients.items()
            }
            after = {t: future.result(timeout=240) for t, future in futures.items()}
        restarter.join()
        elapsed = time.monotonic() - began
        for transport, client in clients.items():
            assert all(a.equals(b) for a, b in zip(before[transport], after[transport], strict=True))
            assert client.stats.retries >= 1, transport  # it did fail first and was retried
            assert client.stats.failures == 0
        assert elapsed >= down_for
    finally:
        for client in clients.values():
            client.close()
        teacher.stop()
