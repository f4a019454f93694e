"""HTTP transport (httpx): one attempt of an `Operation` against the FastAPI side of the service.

The sync and async classes differ only in the `send` call; building the request and reading the answer
(or the failure) is shared. Connection pooling is httpx's: one client per TeacherClient, thread-safe.

Each attempt goes straight to the connection pool the client would pick for the server's URL (its proxy
and TLS settings included), not through `Client.send`: that layer's work per call (auth flow, redirect
loop, cookie extraction through `email.message`, URL merging) is for features this client never uses
(it sends its key as a header, follows no redirect and keeps no cookies). A one-sequence logits call took
1.80 ms of client CPU this way against 1.95 ms through `Client.send` (bench/service_ab.py, same run).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import httpx

from dualdistill.client import errors
from dualdistill.client.operations import Operation
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
        self._headers = dict(client.headers)
        self._urls: dict[str, httpx.URL] = {}

    def build(self, op: Operation[Any], timeout: float) -> httpx.Request:
        url = self._urls.get(op.http_path)
        if url is None:
            url = self._urls[op.http_path] = httpx.URL(self._base + op.http_path)
        headers = {**self._headers, "x-request-id": op.request_id}
        content = None
        if op.body is not None:
            content = json.dumps(op.body, separators=(",", ":")).encode()
            headers["content-type"] = "application/json"
        extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        return httpx.Request(op.http_method, url, headers=headers, content=content, extensions=extensions)


def _result(op: Operation[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        raise errors.from_http_response(response.status_code, response.headers, response.content)
    content_type = response.headers.get("content-type", "")
    if content_type.startswith(BINARY_CONTENT_TYPE):
        if op.from_binary is None:
            raise errors.TeacherServiceError("INTERNAL", f"unexpected binary answer to {op.http_path}")
        return op.from_binary(response.content)
    return op.from_json(json.loads(response.content))


def _failure(base_url: str, timeout: float, exc: httpx.TransportError) -> errors.TeacherServiceError:
    if isinstance(exc, httpx.TimeoutException):
        return errors.timed_out(base_url, timeout, exc)
    return errors.unreachable(base_url, exc)


class HttpTransport:
    """Synchronous HTTP transport; `base_url` is "http(s)://host:port"."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url
        self._client = httpx.Client(base_url=base_url, headers=_headers(api_key))
        self._requests = _Requests(self._client)
        self._pool = self._client._transport_for_url(self._client.base_url)  # the proxy's, if one applies

    def send(self, op: Operation[T], timeout: float) -> T:
        try:
            response = self._pool.handle_request(self._requests.build(op, timeout))
            try:
                response.read()
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise _failure(self.base_url, timeout, exc) from exc
        return _result(op, response)

    def close(self) -> None:
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
        return _result(op, response)

    async def close(self) -> None:
        await self._client.aclose()
