"""`train(config) -> TrainResult`: the DPD training loop.

    for each micro-batch of this rank (data.iterate_micro_batches), teacher rows prefetched (Prefetcher):
        out = session.forward(ids, mask, DPDBatch(aligned labels, TeacherLogits, reference scores))
              StudentForward: hidden = decoder([chosen; rejected]) (2B, L, H), fused_dpd_loss(hidden,
              lm_head, ...) (fused_loss=false, or no plain LM head: dpd_loss on the (2B, L, V) logits)
        (out.loss * weight).backward()                               weight = n_rank / n_step * world_size
    after the step's last micro-batch (DDP all-reduces, FSDP reduce-scatters the gradients there,
    averaging over ranks): clip, AdamW step, schedule step; log; evaluate / checkpoint when due

The weight makes each micro-batch count in proportion to its pairs whatever rank and micro-batch it
ran on (DDP divides the summed gradient by world_size, the weight multiplies it back): the DPO term is
then exactly the mean over the step's pairs; the KD terms are token means within each micro-batch.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dualdistill.teacher_logits import TeacherLogits
from dualdistill.trainer import checkpoint as ckpt
from dualdistill.trainer import distributed as dd
from dualdistill.trainer import parallel
from dualdistill.trainer.config import TrainConfig
from dualdistill.trainer.data import MicroBatch, PairBatch, collate, iterate_micro_batches
from dualdistill.trainer.evaluation import evaluate, load_verifier
from dualdistill.trainer.logs import MetricsLog, Progress
from dualdistill.trainer.normalize import StepCounts, step_share
from dualdistill.trainer.setup import Session, build_session
from dualdistill.trainer.teacher import FetchedTeacher

StepHook = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainResult:
    output_dir: Path
    final_step: int
    model_dir: Path | None  # the newest checkpoint: an HF directory of the final weights
    train_metrics: dict[str, Any]  # the last step's record
    eval_metrics: dict[str, float] | None  # the last evaluation, if any
    examples_seen: int  # by all ranks, in this invocation
    wall_seconds: float
    teacher_wait_seconds: float  # this rank's time blocked on teacher rows


def train(config: TrainConfig, on_step: StepHook | None = None) -> TrainResult:
    """Train the student as `config` says (under torchrun: one rank of a DDP run).

    on_step(step, record) is called on every rank after each optimizer step, once its checkpoint (if
    due) is written; an exception raised there stops the run like a crash would.
    """
    config.validate()
    info = dd.env_info()
    device = dd.pick_device(config.device, info)
    created = dd.init(info, device)
    try:
        session = build_session(config, info, device)
        try:
            return _run(session, on_step)
        finally:
            session.teacher.close()
    finally:
        dd.shutdown(created)


def pair_loss(session: Session, forward: Any, batch: PairBatch, fetched: FetchedTeacher) -> Any:
    """dpd_loss (or fused_dpd_loss) of one collated batch ([chosen; rejected] in one forward pass).

    `forward` is the session's StudentForward (in DDP, or the FSDP root): the loss runs inside its call."""
    from dualdistill.losses import DPDBatch

    device = session.device
    teacher = TeacherLogits.from_results(fetched.chosen + fetched.rejected, batch.starts, batch.seq_len).to(device)
    ref = session.reference.scores(batch, fetched) if session.reference is not None else None
    gaps = None
    if session.loss_config.margin_mode == "score-gap" and session.loss_config.dpo_weight > 0:
        gaps = torch.tensor([e.score_gap for e in batch.examples], dtype=torch.float32, device=device)
    stacked = DPDBatch(batch.labels.to(device), batch.loss_mask.to(device), teacher, ref, gaps)
    return forward(batch.input_ids.to(device), batch.attention_mask.to(device), stacked, session.loss_config)


def weights_sha256(model: Any) -> str:
    """SHA-256 over every parameter's name, dtype, shape and bytes (in state_dict order); of this rank's
    shards when the model is sharded (FSDP ranks hold different shards, DDP ranks the same weights)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor: this rank's shard
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class _StepTotals:
    """One step's metrics on this rank, kept on the device until `reduce`.

    "loss" is the optimised step loss L_step (`trainer.normalize`): the sum of the micro-batches' shares.
    With token-level KD ("token" reduction), "pos" and "neg" are token means over the step's response
    tokens, as L_step weighs them; every other metric is a mean over the step's pairs."""

    def __init__(self, token_kd: bool) -> None:
        self.token_kd = token_kd
        self.sums: dict[str, torch.Tensor] = {}
        self.totals: dict[str, torch.Tensor] = {}  # sums not divided by the step's pairs
        self.examples = 0
        self.ids: list[str] = []

    def _accumulate(self, into: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
        value = value.detach().to(torch.float64)
        into[key] = into[key] + value if key in into else value

    def add(self, out: Any, examples: list[str], step_loss: torch.Tensor) -> None:
        """out: the micro-batch's DPDLossOutput; step_loss: its share of L_step (without DDP's factor)."""
        n = len(examples)
        terms = {"dpo": out.dpo, "pos": out.pos, "neg": out.neg}
        for key, value in {**out.metrics, **terms}.items():
            if key == "loss" or (self.token_kd and key in ("pos", "neg")):
                continue
            self._accumulate(self.sums, key, value * n)
        self._accumulate(self.totals, "loss", step_loss)
        if self.token_kd:
            for side in ("pos", "neg"):
                tokens = out.metrics.get(f"kd_{side}/tokens")
                tokens = torch.zeros((), device=out.dpo.device) if tokens is None or n == 0 else tokens
                self._accumulate(self.totals, f"{side}_sum", terms[side] * tokens)
                self._accumulate(self.totals, f"{side}_tokens", tokens)
        self.examples += n
        self.ids.extend(examples)

    def reduce(
        self, session: Session, grad_norm: torch.Tensor | None
    ) -> tuple[dict[str, Any], list[list[str]]]:
        """Means over the step's examples on all ranks, and the gradient norm: the step's one host sync."""
        keys, total_keys = list(self.sums), list(self.totals)
        device = session.device
        values = torch.stack(
            [self.sums[k] for k in keys]
            + [self.totals[k] for k in total_keys]
            + [torch.tensor(float(self.examples), dtype=torch.float64, device=device)]
        )
        values = dd.sum_over_ranks(
            values, session.info
        )  # sums over ranks of numerator and count: ratio is exact
        norm = (
            torch.full((1,), float("nan"), dtype=torch.float64, device=device)
            if grad_norm is None
            else grad_norm.detach().to(torch.float64).reshape(1)
        )
        *summed, n, norm_value = torch.cat([values, norm]).tolist()
        n = max(n, 1e-12)
        metrics: dict[str, Any] = {k: v / n for k, v in zip(keys, summed[: len(keys)], strict=True)}
        totals = dict(zip(total_keys, summed[len(keys) :], strict=True))
        metrics["loss"] = totals["loss"]
        if self.token_kd:
            for side in ("pos", "neg"):
                metrics[side] = totals[f"{side}_sum"] / max(totals[f"{side}_tokens"], 1.0)
        metrics["grad_norm"] = None if grad_norm is None else norm_value
        return metrics, dd.all_gather_objects(self.ids, session.info)


def _run(session: Session, on_step: StepHook | None) -> TrainResult:
    cfg, info = session.config, session.info
    began = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        print("resolved config:\n" + cfg.to_json(), flush=True)
        (output_dir / "train_config.json").write_text(cfg.to_json() + "\n", encoding="utf-8")
        for note in session.notes:
            print(note, file=sys.stderr)
    dd.barrier(info)
    model, wrapped = session.model, session.forward
    log = MetricsLog(
        output_dir, info.is_main, cfg.tensorboard, session.start_step if session.resumed_from else None
    )
    log.write({"kind": "run", "event": "resume" if session.resumed_from else "start", "step": session.start_step,
               "world_size": info.world_size, "total_steps": session.total_steps, **session.teacher_facts})  # fmt: skip
    examples = session.train_examples
    micro_batches = iterate_micro_batches(
        len(examples), session.geometry, info.rank, cfg.seed, cfg.epochs,
        session.start_epoch, session.start_position, session.start_step, session.total_steps,
    )  # fmt: skip
    verifier = load_verifier(cfg.verifier, session.eval_examples) if session.eval_examples else None
    progress = Progress(info.is_main and cfg.progress, session.total_steps, session.start_step)
    from dualdistill.prefetch import Prefetcher

    prefetcher = Prefetcher(
        lambda mb: session.teacher.fetch([examples[i] for i in mb.indices]),
        micro_batches,
        depth=cfg.prefetch_depth,
    )
    record: dict[str, Any] = {}
    token_kd = session.loss_config.kd_reduction == "token"
    eval_metrics: dict[str, float] | None = None
    seen, step = 0, session.start_step
    totals = _StepTotals(token_kd)
    try:
        for mb, fetched in prefetcher:
            batch = collate([examples[i] for i in mb.indices], session.pad_id)
            if mb.micro == 0:
                counts = StepCounts.of([examples[i] for i in mb.step_indices])
            last = mb.micro == mb.num_micro - 1
            with parallel.gradient_sync(wrapped, last):
                out = pair_loss(session, wrapped, batch, fetched)
                pairs = 0 if mb.filler else batch.num_pairs
                share = step_share(out, session.loss_config, pairs, counts, info.world_size)
                share.backward()
            totals.add(out, [] if mb.filler else [e.id for e in batch.examples], share / info.world_size)
            if not last:
                continue
            step = mb.step
            record, eval_metrics = _finish_step(
                session, model, mb, totals, prefetcher, verifier, log, eval_metrics
            )
            seen += record["examples"]
            totals = _StepTotals(token_kd)
            progress.update({k: record[k] for k in ("loss", "dpo", "pos", "neg") if k in record})
            if on_step is not None:
                on_step(step, record)
    finally:
        prefetcher.close()
        progress.close()
    if step == session.start_step and session.start_step >= session.total_steps and info.is_main:
        print(f"nothing to do: the run already reached step {session.total_steps}", file=sys.stderr)
    digests = dd.all_gather_objects(weights_sha256(model), info)  # DDP ranks must agree bit for bit
    log.write({"kind": "run", "event": "end", "step": step, "wall_seconds": time.perf_counter() - began,
               "weights_sha256": digests})  # fmt: skip
    log.close()
    if info.is_main and cfg.plots:
        from dualdistill.trainer.plots import write_plots

        write_plots(output_dir)
    dd.barrier(info)
    return TrainResult(
        output_dir=output_dir,
        final_step=step,
        model_dir=ckpt.latest_checkpoint(output_dir),
        train_metrics=record,
        eval_metrics=eval_metrics,
        examples_seen=seen,
        wall_seconds=time.perf_counter() - began,
        teacher_wait_seconds=prefetcher.stats.wait_seconds,
    )


def _finish_step(
    session: Session,
    model: Any,
    mb: MicroBatch,
    totals: _StepTotals,
    prefetcher: Any,
    verifier: Any,
    log: MetricsLog,
    eval_metrics: dict[str, float] | None,
) -> tuple[dict[str, Any], dict[str, float] | None]:
    """Optimizer step, then the step's log record, evaluation and checkpoint when due."""
    cfg, info = session.config, session.info
    lr = session.optimizer.param_groups[0]["lr"]
    grad_norm = None
    if cfg.max_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: DTensor
    session.optimizer.step()
    session.scheduler.step()
    session.optimizer.zero_grad(set_to_none=True)
    metrics, ids = totals.reduce(session, grad_norm)
    grad_norm = metrics.pop("grad_norm")
    client_stats = getattr(getattr(session.teacher, "client", None), "stats", None)
    record = {
        "kind": "train",
        "step": mb.step,
        "epoch": mb.epoch,
        "lr": lr,
        "grad_norm": grad_norm,
        "examples": sum(len(r) for r in ids),
        **metrics,
        "example_ids": ids,
        "teacher_wait_s": prefetcher.stats.wait_seconds,
        "teacher_retries": client_stats.retries if client_stats is not None else 0,
    }
    log.write(record)
    last_step = mb.step == session.total_steps
    if session.eval_examples and ((cfg.eval_every and mb.step % cfg.eval_every == 0) or last_step):
        eval_metrics = _evaluate(session, model, verifier, mb.step)
        log.write({"kind": "eval", "step": mb.step, **eval_metrics})
    if (cfg.save_every and mb.step % cfg.save_every == 0) or last_step:
        epoch, position = mb.epoch, mb.end_position
        if position >= len(session.train_examples):
            epoch, position = epoch + 1, 0
        ckpt.save_checkpoint(
            cfg.output_dir,
            step=mb.step,
            model=model,
            forward=session.forward,
            tokenizer=session.tokenizer,
            optimizer=session.optimizer,
            scheduler=session.scheduler,
            data_position=(epoch, position),
            config_json=cfg.to_json(),
            facts={
                **session.teacher_facts,
                "last_metrics": {k: v for k, v in record.items() if k != "example_ids"},
            },
            info=info,
            keep=cfg.keep_checkpoints,
            export_hf=last_step,
        )
    return record, eval_metrics


def _evaluate(session: Session, model: Any, verifier: Any, step: int) -> dict[str, float]:
    """Rank 0 evaluates (other ranks wait); the training RNG streams are left untouched.

    A sharded model needs every rank for each forward: all ranks evaluate in lock step, with the root's
    parameters (embeddings, norm, LM head) gathered for the duration, and rank 0 reports."""
    metrics: dict[str, float] = {}
    sharded = parallel.is_sharded(session.forward)
    if session.info.is_main or sharded:
        devices = [session.device] if session.device.type == "cuda" else []
        gathered = session.forward if sharded else None
        if gathered is not None:
            gathered.unshard()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            metrics = evaluate(
                model,
                session.tokenizer,
                session.eval_examples,
                session.teacher.fetch,
                session.reference,
                beta=session.loss_config.beta,
                length_normalize=session.loss_config.length_normalize,
                batch_size=session.config.eval_batch_size,
                device=session.device,
                pad_id=session.pad_id,
                verifier=verifier,
                max_new_tokens=session.config.eval_max_new_tokens,
                autocast=lambda: dd.autocast(session.device, session.autocast_dtype),
            )
        if gathered is not None:
            gathered.reshard()
        model.train()
        if session.info.is_main:
            print(f"step {step} eval: " + json.dumps({k: round(v, 4) for k, v in metrics.items()}), flush=True)
        else:
            metrics = {}
    dd.barrier(session.info)
    return metrics
