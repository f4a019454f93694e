"""Everything a run needs before step 1, built in the order that fails fastest.

    tokenizer -> teacher source + tokenizer handshake -> pairs (+ eval split) -> reference
    -> student (from the newest checkpoint on --resume) -> checkpointed / sharded (parallel.prepare)
    -> AdamW + schedule -> restored state and RNGs -> DDP wrapper (parallel.wrap)

The handshake runs before the student is even loaded: a tokenizer mismatch is refused in seconds, never
after an epoch of training on misaligned ids.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualdistill.trainer import checkpoint as ckpt
from dualdistill.trainer import distributed as dd
from dualdistill.trainer import parallel
from dualdistill.trainer.config import API_KEY_ENV, TrainConfig, parse_reference
from dualdistill.trainer.data import Geometry, PairExample, load_pairs, split_holdout
from dualdistill.trainer.optim import build_optimizer, build_scheduler
from dualdistill.trainer.reference import Reference
from dualdistill.trainer.teacher import CaptureTeacher, LiveTeacher


@dataclass
class Session:
    config: TrainConfig
    info: dd.DistInfo
    device: torch.device
    tokenizer: Any
    pad_id: int
    train_examples: list[PairExample]
    eval_examples: list[PairExample]
    loss_config: Any  # DPDLossConfig
    teacher: LiveTeacher | CaptureTeacher
    teacher_facts: dict[str, Any]
    reference: Reference | None  # None when the loss has no DPO term
    model: Any  # the HF model (sharded in place under parallel=fsdp)
    forward: Any  # what the loop calls: StudentForward, in DDP when wrapped, itself the FSDP root when sharded
    optimizer: torch.optim.Optimizer
    scheduler: Any
    geometry: Geometry
    total_steps: int
    autocast_dtype: torch.dtype | None
    start_step: int = 0
    start_epoch: int = 0
    start_position: int = 0
    resumed_from: Path | None = None
    notes: list[str] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bfloat16 when asked for and supported by the device, else None (full precision)."""
    if not config.bf16:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print("bf16 requested but this GPU lacks bfloat16; training in float32", file=sys.stderr)
        return None
    return torch.bfloat16


def open_teacher(config: TrainConfig, reference_model: str | None, length_normalize: bool) -> Any:
    """A CaptureTeacher for `capture:DIR`, else a LiveTeacher over a TeacherClient."""
    common = dict(
        params=config.teacher_params,
        reference_model=reference_model,
        length_normalize=length_normalize,
    )
    if config.capture_dir is not None:
        return CaptureTeacher(config.capture_dir, config.teacher_model, **common)
    from dualdistill.client import RetryPolicy, TeacherClient

    def on_retry(retry: int, error: Exception, delay: float) -> None:
        what = f"{getattr(error, 'code', type(error).__name__)}: {getattr(error, 'message', error)}"
        print(f"teacher request failed ({what}); retry {retry} in {delay:.1f} s", file=sys.stderr)

    client = TeacherClient(
        config.teacher_url,
        api_key=os.environ.get(API_KEY_ENV) or None,
        timeout=config.teacher_timeout,
        retries=RetryPolicy(
            max_attempts=config.teacher_retries,
            initial_backoff=min(0.5, config.teacher_max_backoff),
            max_backoff=config.teacher_max_backoff,
        ),
        format=config.teacher_format,
        on_retry=on_retry,
    )
    return LiveTeacher(client, config.teacher_model, **common)


def _load_examples(config: TrainConfig) -> tuple[list[PairExample], list[PairExample]]:
    train = load_pairs(config.pairs, config.max_seq_len)
    if config.eval_pairs:
        held = load_pairs(config.eval_pairs, config.max_seq_len)
    else:
        train, held = split_holdout(train, config.eval_holdout, config.seed)
    if config.eval_max_pairs is not None:
        held = held[: config.eval_max_pairs]
    return train, held


def build_session(config: TrainConfig, info: dd.DistInfo, device: torch.device) -> Session:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dualdistill.losses import DPDLossConfig

    loss_config = DPDLossConfig.preset(config.loss_preset, **config.loss)
    tokenizer = AutoTokenizer.from_pretrained(config.student)
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    reference_spec = config.reference if loss_config.dpo_weight > 0 else None  # no DPO term: no reference
    kind, name = parse_reference(reference_spec) if reference_spec else ("", "")
    served_reference = name if kind == "served" else None
    teacher = open_teacher(config, served_reference, loss_config.length_normalize)
    try:
        facts = teacher.handshake(tokenizer)  # before any training: a mismatch must cost nothing
        train_examples, eval_examples = _load_examples(config)
        autocast = autocast_dtype(config, device)
        reference = None
        if reference_spec is not None:
            reference = Reference(reference_spec, device, loss_config.length_normalize, autocast)
            reference.check_examples(train_examples, config.pairs)
            reference.check_examples(eval_examples, config.eval_pairs or config.pairs)
        geometry = Geometry(config.batch_size, info.world_size, config.grad_accum_steps)
        total = config.epochs * geometry.steps_per_epoch(len(train_examples))
        total = min(total, config.max_steps) if config.max_steps is not None else total
        resume_from = ckpt.latest_checkpoint(config.output_dir) if config.resume else None
        if config.resume and resume_from is None and info.is_main:
            print(f"--resume: no checkpoint in {config.output_dir}; starting from step 0", file=sys.stderr)
        sharded_resume = resume_from is not None and ckpt.is_sharded_checkpoint(resume_from)
        weights = config.student if resume_from is None or sharded_resume else resume_from
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32).to(device)
        model.train()
        seed_everything(config.seed + info.rank)  # ranks differ in dropout noise, never in data order
        forward = parallel.prepare(model, config, info, autocast)
        optimizer = build_optimizer(forward, config)
        scheduler = build_scheduler(optimizer, config, total)
        session = Session(
            config=config,
            info=info,
            device=device,
            tokenizer=tokenizer,
            pad_id=pad_id,
            train_examples=train_examples,
            eval_examples=eval_examples,
            loss_config=loss_config,
            teacher=teacher,
            teacher_facts=facts,
            reference=reference,
            model=model,
            forward=forward,
            optimizer=optimizer,
            scheduler=scheduler,
            geometry=geometry,
            total_steps=total,
            autocast_dtype=autocast,
        )
        if resume_from is not None:
            _restore(session, resume_from)
        session.forward = parallel.wrap(forward, info, device)
        return session
    except BaseException:
        teacher.close()
        raise


def _restore(session: Session, path: Path) -> None:
    """Optimizer, schedule, data position and RNG states of checkpoint `path`."""
    state, rng = ckpt.load_trainer_state(path, session.info)
    if state["world_size"] != session.info.world_size:
        session.notes.append(
            f"checkpoint written by {state['world_size']} rank(s), resuming on {session.info.world_size}: "
            "the data position carries over, bit-exactness does not"
        )
    sharded = parallel.is_sharded(session.forward)
    if sharded != ckpt.is_sharded_checkpoint(path):
        written = "parallel=fsdp (sharded)" if not sharded else "parallel=ddp (one full copy)"
        raise ValueError(
            f"{path} was written by a run with {written}; resume with the same parallel setting "
            f"(this run: parallel={session.config.parallel} on {session.info.world_size} rank(s))"
        )
    if sharded:
        ckpt.load_sharded(path, session.forward, session.optimizer)
    else:
        session.optimizer.load_state_dict(state["optimizer"])
    session.scheduler.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(rng)
    session.start_step = int(state["step"])
    session.start_epoch = int(state["epoch"])
    session.start_position = int(state["position"])
    session.resumed_from = path
