"""Helpers of the reliability suite: raw gRPC calls, API-key files, process memory, and the server's
own outputs (log file + stdout) for leak checks.

Raw gRPC calls use identity (de)serializers, so a test can send bytes that are not a valid protobuf
message and read the status the server answers with, exactly as a foreign client would see it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc

from tests.fixtures.server_process import RunningServer

TEACHER = "/dualdistill.v1.Teacher"
UNARY_METHODS = (f"{TEACHER}/ListModels", f"{TEACHER}/GetLogits", f"{TEACHER}/Generate")
STREAM_METHOD = f"{TEACHER}/StreamLogits"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
CALL_TIMEOUT = 60.0  # seconds; generous for a loaded 2-core machine, far below a hang


@dataclass(frozen=True)
class Outcome:
    """What one raw gRPC call ended with: the status code name and its details."""

    code: str
    details: str

    @classmethod
    def of(cls, error: grpc.RpcError) -> Outcome:
        return cls(error.code().name, error.details() or "")


def raw_unary(channel: grpc.Channel, method: str, payload: bytes, metadata=None) -> Outcome:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(payload, timeout=CALL_TIMEOUT, metadata=metadata)
    except grpc.RpcError as error:
        return Outcome.of(error)
    return Outcome("OK", "")


def raw_stream(channel: grpc.Channel, payloads: list[bytes], metadata=None) -> Outcome:
    call = channel.stream_stream(STREAM_METHOD, request_serializer=None, response_deserializer=None)
    try:
        for _ in call(iter(payloads), timeout=CALL_TIMEOUT, metadata=metadata):
            pass
    except grpc.RpcError as error:
        return Outcome.of(error)
    return Outcome("OK", "")


def leaks_internals(details: str) -> bool:
    """True when an error message shows the server's insides (exception classes, tracebacks, paths)."""
    return any(marker in details for marker in ("Traceback", "<class '", "Error parsing message", ".py\""))


@dataclass(frozen=True)
class ApiKeys:
    """Tenant -> key, and the key file `dualdistill serve --api-key-file` reads ('tenant:key' lines)."""

    keys: dict[str, str]
    path: Path

    @classmethod
    def write(cls, path: Path, tenants: tuple[str, ...] = ("team-a", "team-b")) -> ApiKeys:
        keys = {tenant: f"dd-test-{secrets.token_hex(16)}" for tenant in tenants}
        path.write_text("".join(f"{tenant}:{key}\n" for tenant, key in keys.items()))
        path.chmod(0o600)
        return cls(keys, path)

    @property
    def first(self) -> str:
        return next(iter(self.keys.values()))

    def near_miss(self) -> str:
        """A wrong key that differs from a valid one in its last character only."""
        key = self.first
        return key[:-1] + ("0" if key[-1] != "0" else "1")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def grpc_bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def server_output(server: RunningServer) -> str:
    """Everything the server process wrote: its JSON log (stderr, in a file) and its stdout lines."""
    log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    return log + "\n" + "\n".join(server.stdout_lines)


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
