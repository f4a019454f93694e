"""dualdistill: train small LLMs from a shared teacher service with Dual-level Preference Distillation."""

from dualdistill.protocol.params import LogitsParams
from dualdistill.protocol.results import SequenceLogits

# The client pulls in grpc and httpx; imported on first use so `import dualdistill` (and the CLI's
# `--help`) stays light.
_LAZY = {
    "TeacherClient": "dualdistill.client",
    "AsyncTeacherClient": "dualdistill.client",
    "TeacherServiceError": "dualdistill.client",
    "Prefetcher": "dualdistill.prefetch",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dualdistill' has no attribute {name!r}")


__all__ = ["LogitsParams", "SequenceLogits", "TeacherClient", "AsyncTeacherClient", "TeacherServiceError", "Prefetcher"]
__version__ = "0.1.0"
