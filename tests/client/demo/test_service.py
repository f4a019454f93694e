"""The service launcher's cleanup pieces without a model: escalation to SIGKILL, signals turned into
KeyboardInterrupt, the parent-death signal, and a service that fails to start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dualdistill.demo.service import ServiceStartError, _signals_as_interrupt, run_service, stop_process_group
from tests.client.demo.helpers import ROOT, gone

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(120)"


def test_stop_process_group_kills_a_child_that_ignores_sigterm():
    child = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)  # fmt: skip
    assert child.stdout.readline().strip() == "up"
    began = time.monotonic()
    assert stop_process_group(child, grace_seconds=0.5) == -signal.SIGKILL
    assert time.monotonic() - began < 10 and gone(child.pid)


def test_sigterm_becomes_keyboard_interrupt_while_a_service_runs():
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with _signals_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises long before this ends
    assert signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_child_is_told_to_stop_when_its_parent_is_killed():
    parent_code = textwrap.dedent("""
        import subprocess, sys, time
        from dualdistill.demo.service import die_with_parent
        child = subprocess.Popen(die_with_parent([sys.executable, "-c", "import time; time.sleep(120)"]),
                                 start_new_session=True)
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    child_pid = int(parent.stdout.readline())
    assert not gone(child_pid)
    parent.kill()  # SIGKILL: no finally, no handler runs in the parent
    parent.wait()
    deadline = time.monotonic() + 20
    while not gone(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(child_pid)


def test_a_service_that_cannot_load_its_model_raises_and_leaves_nothing(tmp_path):
    spawned: list[subprocess.Popen] = []
    with pytest.raises(ServiceStartError, match="exited with code") as info:
        with run_service({"teacher": tmp_path / "no-such-model"}, log_path=tmp_path / "server.log", threads=1,
                         on_start=spawned.append):  # fmt: skip
            pytest.fail("the block must not run")
    assert "no-such-model" in str(info.value)
    assert len(spawned) == 1 and gone(spawned[0].pid)
