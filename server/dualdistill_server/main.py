"""`serve_forever`: both transports in one event loop, model loading, and the graceful drain.

Timeline of one process:
    read the API keys, open the result cache (exit 2 / 1 when they are unusable)
    bind HTTP + gRPC ──> /healthz 200, /readyz 503, health NOT_SERVING
    check the engine settings (--engine, --engine-arg; exit 2 naming a bad one)
    load models with the engine (a thread; the loop keeps answering probes; a failed load exits 1)
    ──> /readyz 200, health SERVING, stdout: "dualdistill serving http=HOST:PORT grpc=HOST:PORT"
    SIGTERM / SIGINT ──> /readyz 503, health NOT_SERVING, new requests UNAVAILABLE (503)
    in-flight requests finish (at most drain_seconds) ──> 0.5 s more of refusals ──> listeners close
    ──> cache writes flushed ──> exit 0
A second signal during the drain skips the wait. An engine that dies while serving (vllm) starts the same
drain and the process exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

import uvicorn
from pydantic import ValidationError

from dualdistill.protocol.wire import kernels as wire_kernels

from .cache import open_backend, parse_cache_spec
from .config import ServerConfig
from .core import ApiKeys, ResultCache, TeacherService
from .grpc import GrpcTransport
from .grpc.server import host_port
from .http import create_app
from .http.connections import guarded_protocol
from .logs import configure_logging
from .metrics import Metrics

log = logging.getLogger("dualdistill_server")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LINGER_SECONDS = 0.5  # after the drain: still refusing new requests before the listeners close


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: serve_forever drains first, then stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29 spelling of the same hook
        return None


def serve_forever(overrides: dict) -> int:
    """Run the service until SIGTERM/SIGINT; returns the process exit code (0 after a clean drain,
    1 when a port cannot be bound or a model fails to load, 2 for invalid settings)."""
    try:
        config = ServerConfig(**overrides)
    except ValidationError as exc:
        print(f"dualdistill serve: invalid settings\n{exc}", file=sys.stderr)
        return 2
    if config.log_level.lower() not in LOG_LEVELS:
        print(f"dualdistill serve: log_level must be one of {LOG_LEVELS}, got {config.log_level!r}", file=sys.stderr)
        return 2
    if not config.models:
        print("dualdistill serve: no model given; pass --model NAME=PATH (or DUALDISTILL_MODELS)", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    try:
        from .engines import check_settings

        check_settings(config.engine, config.engine_args)
    except (ValueError, ImportError) as exc:
        print(f"dualdistill serve: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(config))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP.
    # Without it a response's head and body go out as two segments, and Nagle holds the body until the
    # client's delayed ACK of the head (~40 ms per request on a kept-alive connection).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def _in_daemon_thread(fn, *args):
    """Run a blocking call without holding up exit: a signal during a slow load must not wait for it."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result: object, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name="model-loader", daemon=True).start()
    return await future


def _quiet_transformers() -> None:
    """transformers logs through its own handler and draws progress bars; route it into our JSON logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


def _load_models(config: ServerConfig) -> dict:
    _quiet_transformers()
    from . import engines

    # The wire codec's kernels (about a second, mostly numba's import): beside the model loading with the
    # hf engine, only after it with vLLM (numba must not be loaded while vLLM starts an engine:
    # engines/vllm/environment.py). Readiness waits for them, so the startup objects are frozen with them
    # (`_freeze_startup_objects`) and no request shares the GIL with a compiler.
    warming = None
    if config.engine != "vllm":
        warming = threading.Thread(target=_warm_wire_kernels, name="wire-kernels", daemon=True)
        warming.start()
    models = {}
    for name, path in config.model_specs():
        begin = time.perf_counter()
        models[name] = engines.load_served_model(config, name, path)
        seconds = time.perf_counter() - begin
        log.info("loaded model %s from %s with engine %s in %.1f s", name, path, config.engine, seconds,
                 extra={"model": name, "engine": config.engine, "seconds": round(seconds, 3)})
        begin = time.perf_counter()
        if engines.warm_up(models[name]):  # before readiness: the first requests must not wait for compilers
            seconds = time.perf_counter() - begin
            log.info("warmed up model %s in %.1f s", name, seconds, extra={"model": name, "seconds": round(seconds, 3)})
    if warming is None:
        _warm_wire_kernels()
    else:
        warming.join()
    return models


def _warm_wire_kernels() -> None:
    """Compile (or load from numba's cache) the wire codec's kernels, so the first request does not."""
    seconds = wire_kernels.warm_up()
    if seconds:
        log.info("wire codec kernels ready in %.1f s", seconds, extra={"seconds": round(seconds, 3)})


def _freeze_startup_objects() -> None:
    """Move every object alive now (the imported libraries, the loaded models) out of the collector's reach.

    A full (generation 2) collection walks every tracked object; with torch and transformers loaded that
    is over a million, about 260 ms on these CPUs, during which no request makes progress: under the
    loadgen's 64 clients these pauses were the p99 latency (14 in 20 s). Frozen objects are still freed
    by reference counting; only a cycle among them would stay. Objects created later are collected as
    usual; `_serve` unfreezes them all before the interpreter exits.
    """
    gc.collect()
    gc.freeze()
    log.info("froze %d startup objects (out of the garbage collector's full passes)", gc.get_freeze_count(),
             extra={"objects": gc.get_freeze_count()})


def _engine_failures(models: dict) -> asyncio.Future:
    """A future that gets the first error of any model's engine after loading (never set for hf)."""
    from .engines import on_failure

    loop = asyncio.get_running_loop()
    failed = loop.create_future()

    def report(name: str, error: BaseException) -> None:
        if not failed.done():
            failed.set_result((name, error))

    for name, model in models.items():
        on_failure(model, lambda error, name=name: loop.call_soon_threadsafe(report, name, error))
    return failed


def _cache_description(spec: str) -> str:
    """The cache setting for the log, without a Redis password."""
    parsed = parse_cache_spec(spec)
    if parsed.kind != "redis":
        return spec
    from urllib.parse import urlsplit

    parts = urlsplit(parsed.location)
    return f"redis {parts.hostname}:{parts.port or 6379}{parts.path} (ttl {parsed.ttl_seconds} s)"


def _open_service(config: ServerConfig) -> TeacherService | int:
    """The service with its API keys and result cache, or an exit code (2: bad keys, 1: no cache)."""
    try:
        api_keys = ApiKeys.from_settings(config.api_key_file, config.api_keys)
    except ValueError as exc:
        log.error("invalid API keys: %s", exc)
        return 2
    try:
        backend = open_backend(config.cache, config.cache_bytes)
    except Exception as exc:  # noqa: BLE001 - e.g. a disk cache directory that cannot be written
        log.error("cannot open the result cache %s: %s", _cache_description(config.cache), exc)
        return 1
    metrics = Metrics()
    log.info("result cache: %s; API keys: %s", _cache_description(config.cache),
             f"{len(api_keys.tenants)} tenant(s)" if api_keys.enabled else "off (no key needed)")
    return TeacherService({}, config, metrics=metrics, cache=ResultCache(backend, metrics), api_keys=api_keys)


async def _serve(config: ServerConfig) -> int:
    service = _open_service(config)
    if isinstance(service, int):
        return service
    try:
        http_socket = _bind(config.host, config.http_port)
    except OSError as exc:
        log.error("cannot bind HTTP to %s: %s", host_port(config.host, config.http_port), exc)
        return 1
    grpc_transport = GrpcTransport(service, config)
    try:
        grpc_port = await grpc_transport.start()
    except OSError as exc:
        log.error("%s", exc)
        http_socket.close()
        return 1
    http = _HttpServer(
        uvicorn.Config(
            create_app(service, config), log_config=None, access_log=False, lifespan="off", server_header=False,
            http=guarded_protocol(config.header_timeout_seconds, config.max_connections, config.body_timeout_seconds),
            timeout_graceful_shutdown=max(1, int(config.drain_seconds)),
        )
    )
    http_task = asyncio.create_task(http.serve(sockets=[http_socket]))
    if config.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr=config.host, registry=service.metrics.registry)
    addresses = {"http": host_port(config.host, http_socket.getsockname()[1]),
                 "grpc": host_port(config.host, grpc_port)}
    log.info("listening; loading %d model(s)", len(config.models), extra=addresses)

    stop, signals = _signal_event()
    exit_code = await _load_and_serve(service, config, addresses, stop, http_task)
    await _drain(service, config, signals, stop)
    await grpc_transport.stop(grace=1.0)
    http.should_exit = True
    with contextlib.suppress(Exception):
        await http_task
    await service.close()
    gc.unfreeze()  # the exit's last collection then finalizes them (native extensions report leaks otherwise)
    log.info("stopped", extra={"code": exit_code})
    return exit_code


def _signal_event() -> tuple[asyncio.Event, list[int]]:
    """An event set by SIGTERM / SIGINT, and the list of signals received so far."""
    stop, signals = asyncio.Event(), []

    def on_signal(signum: int) -> None:
        signals.append(signum)
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop, signals


async def _load_and_serve(
    service: TeacherService, config: ServerConfig, addresses: dict, stop: asyncio.Event, http_task: asyncio.Task
) -> int:
    """Load the models, become ready, serve until a signal. Returns the exit code so far."""
    loading = asyncio.ensure_future(_in_daemon_thread(_load_models, config))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({loading, stopped, http_task}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done() and not stop.is_set() and not http_task.done():
            try:
                models = loading.result()
            except Exception as exc:
                from .models import ModelLoadError  # imported by the loader already

                # A ModelLoadError's message says what to fix; a traceback only helps for the unexpected.
                log.error("loading the models failed: %s", exc, exc_info=not isinstance(exc, ModelLoadError))
                return 1
            for name, model in models.items():
                service.add_model(name, model)
            _freeze_startup_objects()
            service.mark_loaded()
            failed = _engine_failures(models)
            print(f"dualdistill serving http={addresses['http']} grpc={addresses['grpc']}", flush=True)
            await asyncio.wait({stopped, http_task, failed}, return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                name, error = failed.result()
                log.error("the engine of model %s failed (%s); stopping", name, error)
                return 1
            failed.cancel()
        if http_task.done() and not stop.is_set():
            log.error("the HTTP server stopped unexpectedly")
            return 1
        return 0
    finally:
        stopped.cancel()
        loading.cancel()


async def _drain(service: TeacherService, config: ServerConfig, signals: list[int], stop: asyncio.Event) -> None:
    """Not ready any more; wait for in-flight requests (at most drain_seconds; a second signal ends it)."""
    service.start_draining()
    if signals:
        log.info("signal %s: draining %d request(s) in flight", signals[0], service.active_requests)
    stop.clear()
    if len(signals) > 1:
        return
    idle = asyncio.ensure_future(service.wait_idle(config.drain_seconds))
    again = asyncio.ensure_future(stop.wait())
    await asyncio.wait({idle, again}, return_when=asyncio.FIRST_COMPLETED)
    again.cancel()
    if not (idle.done() and idle.result()):
        idle.cancel()
        log.warning("drain ended with %d request(s) still in flight", service.active_requests)
        return
    if signals and not stop.is_set():
        # Clients that just got their last answer send the next request at once. Refusing it for a moment
        # longer with a retryable 503 / UNAVAILABLE (and Retry-After) beats closing under it: gRPC cancels
        # calls that arrive while its server stops (CANCELLED, which clients do not retry).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), min(LINGER_SECONDS, config.drain_seconds))
