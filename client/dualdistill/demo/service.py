"""Run `dualdistill serve` as a child process for the length of a `with` block, and always stop it.

    with run_service({"teacher": teacher_dir, "reference": sft_dir}, log_path=workdir / "server.log") as svc:
        TeacherClient(svc.http_url) ...

Why a child process rather than the service in this process: the demo and the experiments talk to the
teacher exactly as a training job on another machine would (network, wire format, result cache).

The cleanup guarantee (no orphan server, whatever happens to this process):
- the child runs in its own session / process group, so a Ctrl-C in the terminal reaches only this
  process; its KeyboardInterrupt unwinds the `with` block, whose `finally` stops the child: SIGTERM to
  the group (the server drains for at most `drain_seconds`), SIGKILL to the group if it is still there;
- SIGTERM and SIGHUP to this process are turned into KeyboardInterrupt while the block runs (main thread
  only), so `kill PID` cleans up the same way instead of dying with the child still running;
- on Linux the child also gets PR_SET_PDEATHSIG=SIGTERM: if this process is killed with SIGKILL (no
  `finally` runs), the kernel still tells the child to stop. A two-line Python wrapper sets it and then
  exec()s the server (the setting survives exec); a `preexec_fn` would do the same but is unsafe in a
  process that has threads, which the demo has.

DUALDISTILL_* variables of this environment are not passed on (except DUALDISTILL_HOME, the model
cache), so an API key or a model list set for another purpose cannot change the demo's service.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SERVING_RE = re.compile(r"^dualdistill serving http=(\S+) grpc=(\S+)$")
PASSED_ENV = ("DUALDISTILL_HOME",)  # the only DUALDISTILL_* variable the child inherits
# argv: PARENT_PID PROGRAM ARGS...; exits if the parent is already gone (it died before prctl ran).
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "sys.exit(1) if os.getppid() != int(sys.argv[1]) else os.execv(sys.argv[2], sys.argv[2:])"
)


class ServiceStartError(RuntimeError):
    """The service exited or did not become ready in time; the message carries its log's tail."""


@dataclass
class RunningService:
    process: subprocess.Popen
    http_address: str  # "127.0.0.1:PORT"
    grpc_target: str  # "127.0.0.1:PORT"
    log_path: Path
    stdout_lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _child_env(threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALDISTILL_") or k in PASSED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the server
    return env


def die_with_parent(command: Sequence[str]) -> list[str]:
    """`command` run so that it gets SIGTERM when this process dies (Linux); unchanged elsewhere."""
    if not sys.platform.startswith("linux"):
        return list(command)  # the try/finally and the signal handlers still apply
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def service_command(models: Mapping[str, str | Path], host: str, extra_args: Sequence[str]) -> list[str]:
    """The `dualdistill serve` command line (ports 0: the OS picks free ones, the server prints them)."""
    command = [sys.executable, "-m", "dualdistill.cli.main", "serve", "--host", host,
               "--http-port", "0", "--grpc-port", "0"]  # fmt: skip
    for name, path in models.items():
        command += ["--model", f"{name}={path}"]
    return command + list(extra_args)


def stop_process_group(process: subprocess.Popen, grace_seconds: float) -> int:
    """SIGTERM the child's process group, wait up to `grace_seconds`, then SIGKILL it; returns the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            pass
    # The group may hold workers the server started; SIGKILL whatever is left (a no-op when all is gone).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM / SIGHUP raise KeyboardInterrupt in the main thread while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def run_service(
    models: Mapping[str, str | Path],
    *,
    log_path: str | Path,
    extra_args: Sequence[str] = (),
    host: str = "127.0.0.1",
    ready_timeout: float = 600.0,
    drain_seconds: float = 5.0,
    threads: int | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> Iterator[RunningService]:
    """Start `dualdistill serve --model NAME=DIR ...`, wait until it prints its addresses, stop it after.

    models: served name -> HF directory. log_path: the server's stderr (JSON logs) goes there.
    ready_timeout: seconds to wait for every model to load. drain_seconds: the server's drain budget on
    SIGTERM; it is SIGKILLed `drain_seconds + 10` s after SIGTERM if still running. threads: the server's
    torch intra-op threads (OMP_NUM_THREADS); None inherits this environment's setting.
    on_start(process): called right after the child is spawned (tests record the pid with it).
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = service_command(models, host, [*extra_args, "--drain-seconds", str(drain_seconds)])
    with _signals_as_interrupt(), open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            die_with_parent(command),
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            text=True,
            env=_child_env(threads),
            start_new_session=True,
        )
        try:
            if on_start is not None:
                on_start(process)
            service = _wait_ready(process, log_path, ready_timeout, command)
            yield service
        finally:
            stop_process_group(process, drain_seconds + 10.0)


def _wait_ready(process: subprocess.Popen, log_path: Path, timeout: float, command: list[str]) -> RunningService:
    lines: list[str] = []
    found = threading.Event()
    address: list[str] = []

    def read_stdout() -> None:  # drains stdout for the whole life of the child, so it never blocks on it
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            match = SERVING_RE.match(line.strip())
            if match and not found.is_set():
                address.extend(match.groups())
                found.set()

    threading.Thread(target=read_stdout, name="service-stdout", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.1):
        if process.poll() is not None:
            raise ServiceStartError(
                f"the teacher service exited with code {process.returncode} before it was ready; command: "
                f"{' '.join(command)}\nlast lines of {log_path}:\n{_tail(log_path, 30)}"
            )
        if time.monotonic() > deadline:
            raise ServiceStartError(
                f"the teacher service was not ready after {timeout:.0f} s; see {log_path}:\n{_tail(log_path, 30)}"
            )
    return RunningService(process, address[0], address[1], log_path, lines)
