"""The DPD trainer: `train(TrainConfig) -> TrainResult` (docs/training.md).

    config.py       TrainConfig (documented, bounded fields), YAML/JSON loading, --set overrides
    data.py         pairs JSONL, per-epoch order, rank/micro-batch split, collation
    teacher.py      teacher rows from a live service or a capture directory
    reference.py    DPO reference scores: served:NAME | local:DIR | column
    setup.py        everything before step 1 (handshake first), resume
    loop.py         the training loop, `train`
    evaluation.py   held-out metrics and greedy-generation verifier accuracy
    student.py      the forward + loss the trainer runs; parallel.py DDP / FSDP2 (sharded.py: DCP state)
    checkpoint.py   bit-exact checkpoints; distributed.py torchrun; logs.py, plots.py

`train` and `TrainResult` are imported on first use, so that reading a config (the CLI's parser, the
docs table) does not import torch.
"""

from typing import Any

from dualdistill.trainer.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):
        from dualdistill.trainer import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'dualdistill.trainer' has no attribute {name!r}")
