"""The model layer: load a causal LM, compute per-sequence teacher distributions, generate completions.

The service core imports exactly these names; docs/api.md ("Semantics") is what `compute_logits` returns,
docs/models.md how models are prepared and pruned.
"""

from dualdistill_server.models.loading import ModelLoadError, load_model, resolve_model_path
from dualdistill_server.models.prepare import dualdistill_home, list_prepared, prepare_alias, prepare_smollm2
from dualdistill_server.models.prune import prune_layers
from dualdistill_server.models.served import ServedModel
from dualdistill_server.models.types import GeneratedCompletion, LogitsTask, ModelInfo

__all__ = [
    "GeneratedCompletion",
    "LogitsTask",
    "ModelInfo",
    "ModelLoadError",
    "ServedModel",
    "dualdistill_home",
    "list_prepared",
    "load_model",
    "prepare_alias",
    "prepare_smollm2",
    "prune_layers",
    "resolve_model_path",
]
