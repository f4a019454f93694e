"""Which transport a URL means, and the transport object for it.

    http://host:port   https://host:port     -> HTTP  (FastAPI side)
    host:port          grpc://host:port      -> gRPC  (plaintext)
    grpcs://host:port                        -> gRPC over TLS (system root certificates)
    openai+http://host:port  openai+https://  -> a stock vLLM OpenAI-compatible server (transport_openai.py)

`transport=` overrides the inference only where the URL leaves room: "host:port" may be either; a URL
whose scheme names the other transport is refused (it would point at the other transport's port).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dualdistill.client.transport_grpc import AsyncGrpcTransport, GrpcTransport
from dualdistill.client.transport_http import AsyncHttpTransport, HttpTransport

TRANSPORTS = ("grpc", "http", "openai")
_SCHEMES = {
    "openai+http": ("openai", False),
    "openai+https": ("openai", True),
    "http": ("http", False),
    "https": ("http", True),
    "grpc": ("grpc", False),
    "grpcs": ("grpc", True),
}


@dataclass(frozen=True)
class Endpoint:
    transport: str  # "grpc" | "http" | "openai"
    address: str  # "host:port" (gRPC target) or "http(s)://host:port" (HTTP base URL, also for "openai")
    secure: bool  # TLS


def parse_endpoint(url: str, transport: str | None = None) -> Endpoint:
    if transport is not None and transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    scheme, sep, rest = url.partition("://")
    if not sep:  # bare host:port
        chosen = transport or "grpc"
        address = f"http://{url}" if chosen in ("http", "openai") else url
        return Endpoint(chosen, address.rstrip("/"), secure=False)
    if scheme.lower() not in _SCHEMES:
        raise ValueError(
            f"unknown scheme {scheme!r} in {url!r}; use http(s)://, grpc(s)://, openai+http(s):// or host:port"
        )
    implied, secure = _SCHEMES[scheme.lower()]
    if transport is not None and transport != implied:
        raise ValueError(
            f"url {url!r} is a {implied} address but transport={transport!r}; give the {transport} port "
            f"as {'http://host:port' if transport == 'http' else 'host:port'}"
        )
    if implied == "openai":
        address = ("https://" if secure else "http://") + rest.rstrip("/")
    else:
        address = url.rstrip("/") if implied == "http" else rest.rstrip("/")
    return Endpoint(implied, address, secure)


def open_transport(
    endpoint: Endpoint, api_key: str | None, max_message_bytes: int, asynchronous: bool
) -> Any:
    """A transport with `send(op, timeout)` and `close()` (coroutines when `asynchronous`)."""
    if endpoint.transport == "openai":
        from dualdistill.client.transport_openai import AsyncOpenAITransport, OpenAITransport

        return (AsyncOpenAITransport if asynchronous else OpenAITransport)(endpoint.address, api_key)
    if endpoint.transport == "http":
        return (AsyncHttpTransport if asynchronous else HttpTransport)(endpoint.address, api_key)
    cls = AsyncGrpcTransport if asynchronous else GrpcTransport
    return cls(endpoint.address, api_key, endpoint.secure, max_message_bytes)
