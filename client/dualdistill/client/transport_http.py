"""HTTP transport: one attempt of an `Operation` against the FastAPI side of the service.

The sync and async classes differ only in the `send` call; building the request and reading the answer
(or the failure) is shared. One connection pool per TeacherClient, thread-safe.

The blocking transport sends over plain_http.py's connections (our own HTTP/1.1 exchange, http11.py) where
the server's URL is plain http:// and no proxy applies: a one-sequence call spends more time in the
client's HTTP stack than in the server's, and that path takes 0.5-0.8 ms less client CPU per call than
httpx's (bench/client_http.py).
Otherwise, and always for the asyncio transport, each attempt goes straight to the connection pool httpx
would pick for the server's URL (its proxy and TLS settings included), not through `Client.send`: that
layer's work per call (auth flow, redirect loop, cookie extraction through `email.message`, URL merging)
is for features this client never uses (it sends its key as a header, follows no redirect and keeps no
cookies).
"""

from __future__ import annotations

import http.client
import json
from typing import Any, TypeVar

import httpx

from dualdistill.client import errors
from dualdistill.client.operations import Operation
from dualdistill.client.plain_http import PlainHttpConnections
from dualdistill.protocol.formats import BINARY_CONTENT_TYPE

T = TypeVar("T")


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"accept": f"{BINARY_CONTENT_TYPE}, application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


class _Requests:
    """Builds each attempt's `httpx.Request` from parts made once: the headers and each path's parsed URL
    (httpx parses and merges them again on every `client.request`; the paths are the API's few routes)."""

    def __init__(self, client: httpx.Client | httpx.AsyncClient) -> None:
        self._base = str(client.base_url).rstrip("/")
        self._path = client.base_url.raw_path.decode("ascii").rstrip("/")  # a prefix the server sits under
        self._headers = dict(client.headers)
        self._urls: dict[str, httpx.URL] = {}

    def build(self, op: Operation[Any], timeout: float) -> httpx.Request:
        url = self._urls.get(op.http_path)
        if url is None:
            url = self._urls[op.http_path] = httpx.URL(self._base + op.http_path)
        _, headers, content = self.parts(op)
        extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        return httpx.Request(op.http_method, url, headers=headers, content=content, extensions=extensions)

    def parts(self, op: Operation[Any]) -> tuple[str, dict[str, str], bytes | None]:
        """(request target: the base URL's path + the route's, headers, body) of one attempt."""
        headers = {**self._headers, "x-request-id": op.request_id}
        content = None
        if op.body is not None:
            content = json.dumps(op.body, separators=(",", ":")).encode()
            headers["content-type"] = "application/json"
        return self._path + op.http_path, headers, content


def _result(op: Operation[T], status: int, headers: Any, content: bytes) -> T:
    """The answer's value, or its error; `headers`: any mapping with a case-insensitive `get`."""
    if status >= 400:
        raise errors.from_http_response(status, headers, content)
    content_type = headers.get("content-type") or ""
    if content_type.startswith(BINARY_CONTENT_TYPE):
        if op.from_binary is None:
            raise errors.TeacherServiceError("INTERNAL", f"unexpected binary answer to {op.http_path}")
        return op.from_binary(content)
    return op.from_json(json.loads(content))


def _failure(base_url: str, timeout: float, exc: Exception) -> errors.TeacherServiceError:
    """No answer, from either stack: httpx's TransportError, or plain_http's OSError / http.client's
    HTTPException (the types plain_http raises too)."""
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return errors.timed_out(base_url, timeout, exc)
    return errors.unreachable(base_url, exc)


def _plain_connections(client: httpx.Client, pool: httpx.BaseTransport) -> PlainHttpConnections | None:
    """plain_http's connections to the client's server where they can stand in for httpx's: plain http://
    and no proxy for it (httpx's own transport is the one it picked), else None."""
    url = client.base_url
    if url.scheme != "http" or pool is not client._transport:
        return None
    return PlainHttpConnections(url.host, url.port or 80)


class HttpTransport:
    """Synchronous HTTP transport; `base_url` is "http(s)://host:port"."""

    def __init__(self, base_url: str, api_key: str | None, *, plain_http: bool = True) -> None:
        """`plain_http`: send through plain_http.py's connections where they apply (plain http://, no
        proxy); False: always through httpx."""
        self.base_url = base_url
        self._client = httpx.Client(base_url=base_url, headers=_headers(api_key))
        self._requests = _Requests(self._client)
        self._pool = self._client._transport_for_url(self._client.base_url)  # the proxy's, if one applies
        self._plain = _plain_connections(self._client, self._pool) if plain_http else None

    def send(self, op: Operation[T], timeout: float) -> T:
        if self._plain is not None:
            return self._send_plain(op, timeout)
        try:
            response = self._pool.handle_request(self._requests.build(op, timeout))
            try:
                response.read()
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise _failure(self.base_url, timeout, exc) from exc
        return _result(op, response.status_code, response.headers, response.content)

    def _send_plain(self, op: Operation[T], timeout: float) -> T:
        target, headers, body = self._requests.parts(op)
        assert self._plain is not None
        try:
            status, response_headers, content = self._plain.request(op.http_method, target, headers, body, timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise _failure(self.base_url, timeout, exc) from exc
        return _result(op, status, response_headers, content)

    def close(self) -> None:
        if self._plain is not None:
            self._plain.close()
        self._client.close()


class AsyncHttpTransport:
    """asyncio HTTP transport; the same requests and parsing as `HttpTransport`."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url
        self._client = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key))
        self._requests = _Requests(self._client)
        self._pool = self._client._transport_for_url(self._client.base_url)

    async def send(self, op: Operation[T], timeout: float) -> T:
        try:
            response = await self._pool.handle_async_request(self._requests.build(op, timeout))
            try:
                await response.aread()
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise _failure(self.base_url, timeout, exc) from exc
        return _result(op, response.status_code, response.headers, response.content)

    async def close(self) -> None:
        await self._client.aclose()
