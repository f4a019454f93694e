"""OS-level names for the server's own threads.

Python's thread names stay inside the interpreter (before 3.14), so `top -H`, `ps -L`, /proc/PID/task/*/comm
and native profilers see every thread of the server as "python". The threads that do the heavy work name
themselves: the model's worker ("model-NAME", the batched forwards) and a vLLM engine's step loop
("vllm-NAME", vLLM's own work). bench/vllm_conversion.py uses the latter to tell the engine's CPU from the
service's.
"""

from __future__ import annotations

import ctypes
import sys

_PR_SET_NAME = 15  # prctl(2)
_MAX_BYTES = 15  # the kernel keeps 16 bytes, the last one NUL
_libc: ctypes.CDLL | None = None


def name_os_thread(name: str) -> bool:
    """Give the calling thread `name` at the OS level (cut to 15 bytes); False where that is not supported."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return _libc.prctl(_PR_SET_NAME, name.encode("utf-8", "replace")[:_MAX_BYTES], 0, 0, 0) == 0
    except (OSError, AttributeError):  # no prctl in this libc
        return False
