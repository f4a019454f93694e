"""The vllm engine: a served model computed by vLLM's engine in this process (docs/deploy.md, "vLLM").

vLLM is imported only when a model is loaded with it, so the rest of the server never needs it.
"""

from dualdistill_server.engines.vllm.environment import INSTALL_HINT, import_vllm

__all__ = ["INSTALL_HINT", "import_vllm", "load_vllm_model"]


def load_vllm_model(*args, **kwargs):
    """engines/vllm/load.py's `load_vllm_model`, imported on first use."""
    from dualdistill_server.engines.vllm.load import load_vllm_model as load

    return load(*args, **kwargs)
