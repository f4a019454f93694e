"""os_threads.name_os_thread: the name the OS (and so top -H, /proc, native profilers) shows for a thread."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from dualdistill_server.os_threads import name_os_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_NAME) is Linux's")


def _comm_of(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()


def test_a_thread_names_itself_and_long_names_are_cut_to_15_bytes() -> None:
    seen = {}

    def run(name: str) -> None:
        seen[name] = (name_os_thread(name), _comm_of(threading.get_native_id()))

    for name in ("model-tiny", "vllm-a-rather-long-model-name"):
        thread = threading.Thread(target=run, args=(name,))
        thread.start()
        thread.join()
    assert seen["model-tiny"] == (True, "model-tiny")
    assert seen["vllm-a-rather-long-model-name"] == (True, "vllm-a-rather-l")


def test_the_model_worker_thread_of_a_server_is_named(tiny_server) -> None:
    import httpx

    body = {"model": "tiny", "sequences": [{"token_ids": [5, 6, 7, 8], "start": 2}]}
    assert httpx.post(tiny_server.http_url + "/v1/logits", json=body, timeout=60).status_code == 200
    names = {path.read_text().strip() for path in Path(f"/proc/{tiny_server.process.pid}/task").glob("*/comm")}
    assert "model-tiny" in names, names
