"""Server settings: one documented model, read from env (DUALDISTILL_*), overridden by CLI flags.

Every field's description is the single source for `dualdistill serve --help`, docs/deploy.md's env table
and the Helm chart's values. Bounds are enforced here, so a bad setting fails at start with its name.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ServerConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DUALDISTILL_", extra="forbid")

    # NoDecode: the env form is 'a=DIR,b=DIR' (split below), not JSON.
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models to serve as NAME=PATH (an HF directory, a hub id, or a prepared alias such as "
        "'smollm2'); env: comma-separated.",
    )
    host: str = Field("0.0.0.0", description="Interface both transports bind to.")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP (FastAPI) port; 0 picks a free port.")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free port; -1 is not allowed.")
    engine: str = Field(
        "hf",
        description="What computes the models: hf (transformers forwards in this process) or vllm (vLLM's "
        "engine in this process: tensor/pipeline parallel, paged KV, continuous batching; docs/deploy.md).",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments (--engine vllm only), e.g. tensor_parallel_size, "
        "distributed_executor_backend, gpu_memory_utilization; flag --engine-arg KEY=VALUE, env a JSON object.",
    )
    device: str = Field("cpu", description="Torch device for the models (hf engine): cpu, cuda, cuda:1, ...")
    dtype: str = Field("float32", description="Model dtype: float32, bfloat16 or float16.")
    max_top_k: int = Field(256, ge=1, le=65536, description="Largest top_k a request may ask for.")
    max_seq_len: int = Field(4096, ge=2, le=1_048_576, description="Longest sequence (tokens) accepted.")
    max_samples: int = Field(1024, ge=1, le=1_000_000, description="Largest `samples` in sample mode.")
    max_batch_tokens: int = Field(
        8192, ge=1, description="Padded tokens (batch x longest sequence) per forward pass of the batcher."
    )
    max_wait_ms: float = Field(
        0.0, ge=0, le=10_000,
        description="How long an idle batcher waits to fill a batch (0: a request starts at once; requests "
        "that arrive during a forward form the next batch).",
    )
    inline_forward_ms: float = Field(
        5.0, ge=0, le=1000,
        description="A forward expected to take at most this long (learned from earlier forwards of as many "
        "padded tokens and returned rows) runs on the event loop's thread when no other request is in flight: "
        "an idle server's short "
        "call skips the hand-off to the model's worker thread and back. Requests arriving meanwhile wait up "
        "to this long to be read. 0: every forward on the worker thread. hf engine only.",
    )
    max_queue_tokens: int = Field(
        262_144, ge=1, description="Tokens queued per model before requests get 429 / RESOURCE_EXHAUSTED."
    )
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest HTTP request body (413 above).")
    max_message_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Largest gRPC message sent (a response), and cap on the received one."
    )
    max_receive_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024,
        description="Largest gRPC request message (RESOURCE_EXHAUSTED above, before grpc hands its bytes to "
        "Python: that copy runs on the event loop, where every other request waits for it). A request of "
        "max_queue_tokens ids is about 1 MB.",
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=3600,
        description="A connection must deliver a complete request head this many seconds after it opens or "
        "after its previous response (HTTP: else 408 and closed); also the gRPC handshake deadline.",
    )
    body_timeout_seconds: float = Field(
        60.0, gt=0, le=3600,
        description="An HTTP request's body must be complete this many seconds after its head (else 408 and "
        "the connection is closed): a client that trickles its body cannot hold a connection for longer.",
    )
    max_connections: int = Field(
        1000, ge=1, le=1_000_000,
        description="Open connections per transport; an HTTP connection beyond it gets 503 and is closed, "
        "a gRPC one is refused. Keep it below the process's file limit (ulimit -n).",
    )
    api_key_file: str | None = Field(None, description="File of 'tenant:key' lines; data endpoints then need a key.")
    api_keys: str | None = Field(None, description="Alternative to the file: 'tenant:key,tenant:key'.")
    cache: str = Field(
        "memory",
        description="Result cache: memory | disk:DIR | redis://HOST:PORT/DB[?ttl=SECONDS] | none "
        "(docs/many-students.md).",
    )
    cache_bytes: int = Field(1 << 30, ge=0, description="Byte budget of the memory or disk cache (LRU).")
    drain_seconds: float = Field(30.0, ge=0, le=3600, description="Grace period for in-flight work on SIGTERM.")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Serve /metrics on its own port too.")
    tenant_tokens_per_second: float | None = Field(
        None, gt=0, description="Per-tenant token-rate limit (token bucket); none by default."
    )
    tenant_max_concurrency: int | None = Field(None, ge=1, description="Per-tenant cap on requests in flight.")
    max_generate_tokens: int = Field(
        65_536, ge=1, description="Largest prompts x n x max_new_tokens of one generate request (422 above)."
    )
    compat_apply_temperature: bool = Field(
        False,
        description="Apply the request's temperature to the logprobs of the vLLM- and TRL-compatible endpoints "
        "(/v1/completions, /get_sequence_logprobs/). Off: raw logprobs (temperature 1), as stock vLLM reports "
        "them; a /v1/completions request can opt in alone with apply_temperature_to_logprobs.",
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        allowed = ("float32", "bfloat16", "float16")
        if value not in allowed:
            raise ValueError(f"dtype must be one of {allowed}, got {value!r}")
        return value

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        from .engines.base import ENGINES

        if value not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {value!r}")
        return value

    @field_validator("cache")
    @classmethod
    def _known_cache(cls, value: str) -> str:
        from .cache import parse_cache_spec  # stdlib only: cheap at settings time

        parse_cache_spec(value)
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("models")
    @classmethod
    def _name_equals_path(cls, value: list[str]) -> list[str]:
        for item in value:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"each model must be NAME=PATH, got {item!r}")
        return value

    def model_specs(self) -> list[tuple[str, str]]:
        """[(name, path), ...] in the order given."""
        return [tuple(item.split("=", 1)) for item in self.models]  # type: ignore[misc]
