"""`TrainConfig`: every setting of `dualdistill train`, documented and bounded in one place.

Each field's `metadata` carries its help text (the source of `--help`, of docs/training.md's table and
of error messages) and, where it has them, its bounds ("min", "max", "min_open") or allowed "choices".
A config comes from defaults, then a YAML/JSON file, then the pinned CLI flags, then `--set key=value`
overrides; `validate()` runs once at the end and names the bad field.

The API key is deliberately not a field: it comes from the environment (DUALDISTILL_API_KEY) so that it
is never printed with the resolved config nor saved inside a checkpoint.
"""

from __future__ import annotations

import difflib
import json
import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dualdistill.bounds import check_choice
from dualdistill.protocol.formats import LOGITS_FORMATS
from dualdistill.protocol.params import LOGITS_MODES, LogitsParams

API_KEY_ENV = "DUALDISTILL_API_KEY"
CAPTURE_SCHEME = "capture:"
REFERENCE_FORMS = ("served:NAME", "local:DIR", "column")


def _help(text: str, **bounds: Any) -> dict[str, Any]:
    return {"help": text, **bounds}


@dataclass
class TrainConfig:
    # --- data and models ---
    student: str = field(default="", metadata=_help("HF causal-LM directory of the student (weights and tokenizer)."))
    pairs: str = field(default="", metadata=_help("Pairs JSONL from `dualdistill pairs` (training data)."))
    output_dir: str = field(
        default="runs/train", metadata=_help("Where checkpoints, metrics.jsonl, plots and the final model go.")
    )
    eval_pairs: str | None = field(
        default=None, metadata=_help("Held-out pairs JSONL for evaluation; none: see eval_holdout.")
    )
    eval_holdout: int = field(
        default=0,
        metadata=_help("Pairs of `pairs` held out for evaluation when eval_pairs is unset (a seeded choice).", min=0),
    )
    max_seq_len: int = field(
        default=1024,
        metadata=_help("Longest prompt+response in tokens; longer responses are cut (the prompt must fit).", min=2),
    )
    # --- teacher ---
    teacher_url: str = field(
        default="",
        metadata=_help("Teacher service: http://HOST:PORT, grpc://HOST:PORT, openai+http://HOST:PORT (a stock "
                      "vLLM server), or capture:DIR (offline capture)."),
    )
    teacher_model: str = field(default="teacher", metadata=_help("Served model name of the teacher."))
    teacher_timeout: float = field(
        default=120.0, metadata=_help("Seconds per teacher request before it is retried.", min=0, min_open=True)
    )
    teacher_format: str = field(
        default="binary",
        metadata=_help(
            "Wire format of teacher answers: binary (compact, lossy), binary-lossless, or json.",
            choices=LOGITS_FORMATS,
        ),
    )
    teacher_retries: int = field(
        default=10,
        metadata=_help("Attempts per teacher request (backoff between them) before the run fails.", min=1),
    )
    teacher_max_backoff: float = field(
        default=30.0,
        metadata=_help("Cap in seconds of the jittered exponential backoff between teacher attempts.", min=0),
    )
    top_k: int = field(default=20, metadata=_help("Teacher entries per position (top-k ids and logprobs).", min=1))
    temperature: float = field(
        default=1.0, metadata=_help("Teacher softmax temperature.", min=0, min_open=True)
    )
    teacher_mode: str = field(
        default="topk", metadata=_help("Teacher rows: the top-k ids, or ids sampled from p.", choices=LOGITS_MODES)
    )
    teacher_samples: int = field(
        default=64, metadata=_help("Draws per position when teacher_mode is 'sample'.", min=1)
    )
    prefetch_depth: int = field(
        default=2, metadata=_help("Batches whose teacher logits are fetched ahead of the step using them.", min=1)
    )
    reference: str = field(
        default="column",
        metadata=_help(
            "DPO reference log-probs: served:NAME (a served model's token logprobs), local:DIR (a frozen "
            "local model) or column (ref_chosen_logps / ref_rejected_logps in the pairs file)."
        ),
    )
    # --- loss ---
    loss_preset: str = field(
        default="dpd", metadata=_help("`DPDLossConfig.preset` name (dpd, distillm2, ...).")
    )
    loss: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help("Overrides of DPDLossConfig fields, e.g. {beta: 0.2}; `--set loss.beta=0.2`."),
    )
    fused_loss: bool = field(
        default=True,
        metadata=_help(
            "Compute the loss from the last hidden states and the LM head in chunks (never the (2B, L, V) logits) "
            "when the student exposes a plain linear LM head; false: from the model's logits."
        ),
    )
    # --- parallelism ---
    parallel: str = field(
        default="ddp",
        metadata=_help(
            "Under torchrun: ddp (a full copy of weights, gradients and AdamW state per rank) or fsdp (FSDP2 "
            "fully_shard: each rank holds 1/world_size of them; sharded checkpoints, HF export at the end).",
            choices=("ddp", "fsdp"),
        ),
    )
    fsdp_mixed_precision: bool = field(
        default=False,
        metadata=_help("parallel=fsdp: gather bf16 parameters, reduce-scatter float32 gradients (master weights fp32)."),
    )
    activation_checkpointing: bool = field(
        default=False,
        metadata=_help("Recompute each decoder layer's activations in backward instead of keeping them (any mode)."),
    )
    # --- optimisation ---
    epochs: int = field(default=1, metadata=_help("Passes over the training pairs.", min=1))
    max_steps: int | None = field(
        default=None, metadata=_help("Stop after this many optimizer steps (none: run all epochs).", min=1)
    )
    batch_size: int = field(default=4, metadata=_help("Pairs per micro-batch on each rank.", min=1))
    grad_accum_steps: int = field(
        default=1, metadata=_help("Micro-batches per optimizer step (gradient accumulation).", min=1)
    )
    learning_rate: float = field(default=1e-5, metadata=_help("Peak AdamW learning rate.", min=0, min_open=True))
    min_lr_ratio: float = field(
        default=0.0, metadata=_help("Cosine floor as a fraction of the peak learning rate.", min=0, max=1)
    )
    warmup_steps: int = field(default=0, metadata=_help("Linear warmup steps before the cosine decay.", min=0))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW decoupled weight decay.", min=0))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1.", min=0, max=1))
    adam_beta2: float = field(default=0.999, metadata=_help("AdamW beta2.", min=0, max=1))
    adam_eps: float = field(default=1e-8, metadata=_help("AdamW epsilon.", min=0, min_open=True))
    max_grad_norm: float = field(
        default=1.0, metadata=_help("Clip the global gradient norm to this; 0 disables clipping.", min=0)
    )
    bf16: bool = field(
        default=False, metadata=_help("bfloat16 autocast for the student forward where the device supports it.")
    )
    seed: int = field(default=0, metadata=_help("Seed of the data order and of python/numpy/torch RNGs.", min=0))
    device: str = field(default="auto", metadata=_help("auto (cuda:LOCAL_RANK when available, else cpu), cpu, cuda."))
    # --- evaluation ---
    eval_every: int = field(
        default=0, metadata=_help("Evaluate every N optimizer steps; 0: only at the end (if eval data exists).", min=0)
    )
    eval_batch_size: int = field(default=8, metadata=_help("Pairs per evaluation batch.", min=1))
    eval_max_pairs: int | None = field(
        default=None, metadata=_help("Evaluate on at most this many held-out pairs.", min=1)
    )
    verifier: str = field(
        default="auto",
        metadata=_help(
            "Task verifier MODULE:FUNCTION(query, response) -> score for greedy-generation accuracy; auto: "
            "the arithmetic task when eval pairs carry an 'answer'; none: skip."
        ),
    )
    eval_max_new_tokens: int = field(
        default=32, metadata=_help("Greedy tokens generated per eval query for the verifier.", min=1)
    )
    # --- checkpoints and logs ---
    save_every: int = field(
        default=0, metadata=_help("Checkpoint every N optimizer steps; 0: only at the end.", min=0)
    )
    keep_checkpoints: int = field(
        default=2, metadata=_help("Newest checkpoints kept (older ones are deleted); 0 keeps all.", min=0)
    )
    resume: bool = field(default=False, metadata=_help("Continue from the newest checkpoint in output_dir."))
    progress: bool = field(default=True, metadata=_help("Show a tqdm progress bar (rank 0)."))
    tensorboard: bool = field(
        default=False, metadata=_help("Also write TensorBoard events (needs the tensorboard package).")
    )
    plots: bool = field(default=True, metadata=_help("Write PNG curves of the losses and eval metrics at the end."))

    # ------------------------------------------------------------------ construction and checks
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from a mapping of field names (unknown names are an error that suggests the closest)."""
        config = cls()
        config.update(data)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Load YAML (.yaml/.yml) or JSON; the file holds a mapping of field names."""
        return cls.from_dict(load_mapping(path))

    def update(self, data: dict[str, Any]) -> None:
        """Set fields from a mapping, coercing YAML scalars to each field's type."""
        if not isinstance(data, dict):
            raise ValueError(f"a config must be a mapping of field names, got {type(data).__name__}")
        known = {f.name: f for f in fields(self)}
        for key, value in data.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown config field {key!r}{hint} (see docs/training.md)")
            setattr(self, key, _coerce(known[key], value))

    def apply_override(self, assignment: str) -> None:
        """Apply `key=value` (value parsed as YAML; `loss.NAME=value` sets one loss override)."""
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {assignment!r}")
        value = _parse_scalar(text)
        if key.startswith("loss."):
            self.loss = {**self.loss, key[len("loss.") :]: value}
        else:
            self.update({key: value})

    def validate(self) -> TrainConfig:
        """Check every bound and cross-field rule; raise ValueError naming the field. Returns self."""
        for f in fields(self):
            _check_bounds(f, getattr(self, f.name))
        for name in ("student", "pairs", "teacher_url", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required: {fields_help()[name]}")
        if not self.teacher_url.startswith(("http://", "https://", "grpc://", "openai+http://", "openai+https://",
                                            CAPTURE_SCHEME)):
            raise ValueError(
                f"teacher_url={self.teacher_url!r} must start with http://, https://, grpc://, openai+http(s):// "
                f"or {CAPTURE_SCHEME}"
            )
        kind, _ = parse_reference(self.reference)
        if kind == "local" and not self.reference[len("local:") :]:
            raise ValueError("reference='local:' needs a directory: local:DIR")
        if not isinstance(self.loss, dict):
            raise ValueError(f"loss must be a mapping of DPDLossConfig fields, got {type(self.loss).__name__}")
        self.teacher_params  # noqa: B018 (LogitsParams' own bounds, e.g. temperature >= 1e-4)
        if self.verifier not in ("auto", "none") and ":" not in self.verifier:
            raise ValueError(f"verifier={self.verifier!r} must be auto, none or MODULE:FUNCTION")
        return self

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @property
    def teacher_params(self) -> LogitsParams:
        """The teacher parameters every request of this run sends (the sample stream seeded by `seed`)."""
        return LogitsParams(
            top_k=self.top_k, temperature=self.temperature, mode=self.teacher_mode, samples=self.teacher_samples,
            seed=self.seed,
        )

    @property
    def capture_dir(self) -> str | None:
        """The capture directory when teacher_url is capture:DIR, else None."""
        if self.teacher_url.startswith(CAPTURE_SCHEME):
            return self.teacher_url[len(CAPTURE_SCHEME) :]
        return None


def parse_reference(reference: str) -> tuple[str, str]:
    """'served:NAME' -> ('served', NAME); 'local:DIR' -> ('local', DIR); 'column' -> ('column', '')."""
    if reference == "column":
        return "column", ""
    kind, sep, value = reference.partition(":")
    if sep and kind in ("served", "local") and value:
        return kind, value
    raise ValueError(f"reference={reference!r} must be one of {', '.join(REFERENCE_FORMS)}")


def fields_help() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in fields(TrainConfig)}


def load_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds a mapping of field names, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------- type handling
def _field_types(f: Any) -> tuple[type, bool]:
    """(base type, optional) of a field annotation such as 'int | None' (annotations are strings here)."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        base = [a for a in args if a is not type(None)]
        return base[0], True
    return typing.get_origin(hint) or hint, False


def _coerce(f: Any, value: Any) -> Any:
    base, optional = _field_types(f)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{f.name} must not be null: {f.metadata['help']}")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-5" as a string
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif base is dict:
        if isinstance(value, dict):
            return dict(value)
    raise ValueError(f"{f.name} must be {base.__name__}{' or null' if optional else ''}, got {value!r}")


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _check_bounds(f: Any, value: Any) -> None:
    meta = f.metadata
    if value is None:
        return
    if "choices" in meta:
        check_choice(f.name, value, meta["choices"])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name}={value!r} must be finite")
        low, high = meta.get("min"), meta.get("max")
        if low is not None and (value <= low if meta.get("min_open") else value < low):
            op = ">" if meta.get("min_open") else ">="
            raise ValueError(f"{f.name}={value!r} must be {op} {low}: {meta['help']}")
        if high is not None and value > high:
            raise ValueError(f"{f.name}={value!r} must be <= {high}: {meta['help']}")


def default_repr(f: Any) -> str:
    if f.default is not MISSING:
        return json.dumps(f.default)
    return json.dumps(f.default_factory())


def bounds_repr(f: Any) -> str:
    meta = f.metadata
    if "choices" in meta:
        return " \\| ".join(meta["choices"])
    parts = []
    if "min" in meta:
        parts.append(f"{'>' if meta.get('min_open') else '>='} {meta['min']}")
    if "max" in meta:
        parts.append(f"<= {meta['max']}")
    return ", ".join(parts)


def config_table_markdown() -> str:
    """The docs table of every field: name, type, default, bounds, help (docs/training.md embeds it)."""
    rows = ["| field | type | default | bounds | description |", "|---|---|---|---|---|"]
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        kind = str(hints[f.name]).replace("typing.", "").replace("<class '", "").replace("'>", "")
        kind = kind.replace("|", "\\|")  # a bare | would split the markdown cell
        rows.append(f"| `{f.name}` | {kind} | `{default_repr(f)}` | {bounds_repr(f)} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"
