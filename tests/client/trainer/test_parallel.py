"""parallel.prepare in one process: activation checkpointing changes memory, not gradients; models
without decoder-layer classes are refused with a message naming the settings; fsdp in a single process
trains unsharded. (Two-rank FSDP runs: test_fsdp.py.)"""

from __future__ import annotations

import pytest
import torch

from dualdistill.losses import DPDBatch, DPDLossConfig, shift_labels
from dualdistill.teacher_logits import TeacherLogits
from dualdistill.trainer import TrainConfig, parallel
from dualdistill.trainer import distributed as dd


def _batch(vocab: int, length: int = 12, k: int = 4) -> tuple[torch.Tensor, DPDBatch]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, length), generator=g)
    response = torch.zeros(2, length, dtype=torch.bool)
    response[:, 4:] = True
    labels, mask = shift_labels(ids, response)
    lp = torch.randn(2, length, k, generator=g).log_softmax(-1) - 0.5
    teacher = TeacherLogits(torch.randint(0, vocab, (2, length, k), generator=g), lp, lp[..., 0].clone(),
                            torch.full((2, length), -1.0), mask.clone())  # fmt: skip
    return ids, DPDBatch(labels, mask, teacher, torch.tensor([-30.0, -35.0]))


def _grads(student_dir, **settings) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    model.train()
    forward = parallel.prepare(model, TrainConfig(**settings), dd.DistInfo(), None)
    assert parallel.wrap(forward, dd.DistInfo(), torch.device("cpu")) is forward  # one process: no wrapper
    ids, batch = _batch(model.config.vocab_size)
    with parallel.gradient_sync(forward, True):
        forward(ids, torch.ones_like(ids), batch, DPDLossConfig()).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_activation_checkpointing_recomputes_to_the_same_gradients(student_dir) -> None:
    plain = _grads(student_dir)
    checkpointed = _grads(student_dir, activation_checkpointing=True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_fsdp_in_one_process_trains_unsharded(student_dir, capsys) -> None:
    grads = _grads(student_dir, parallel="fsdp")
    assert "nothing to shard" in capsys.readouterr().err
    assert all(type(g) is torch.Tensor for g in grads.values())


def test_a_model_without_decoder_layer_classes_is_refused() -> None:
    class Flat(torch.nn.Module):
        _no_split_modules = None

    with pytest.raises(ValueError, match="parallel=ddp and activation_checkpointing=false"):
        parallel.decoder_layers(Flat())


def test_parallel_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="parallel"):
        TrainConfig(student="s", pairs="p", teacher_url="http://x", parallel="zero3").validate()
