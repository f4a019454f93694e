"""client/http11.py: one HTTP/1.1 exchange, against a loopback socket server that answers with the exact
bytes of each case (every framing HTTP/1.1 allows, and the malformed answers it must refuse). The
expected bodies and headers are written out by hand here, not produced by the code under test."""

from __future__ import annotations

import http.client
import socket
import threading

import pytest

from dualdistill.client.http11 import MAX_HEADERS, Connection, Headers
from dualdistill.client.plain_http import PlainHttpConnections


class _Canned:
    """Accepts connections; to each request (its head and Content-Length body) answers the next of
    `answers` (raw bytes), then closes the connection if that answer is followed by None."""

    def __init__(self, *answers: bytes | None) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.answers:
                    request = self._read_request(conn)
                    if request is None:
                        break
                    self.requests.append(request)
                    conn.sendall(self.answers.pop(0))
                    if self.answers and self.answers[0] is None:
                        self.answers.pop(0)
                        break

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += conn.recv(65536)
        return head + b"\r\n\r\n" + body

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


def _exchange(answer: bytes, method: str = "GET", body: bytes | None = None):
    server = _Canned(answer)
    connection = Connection("127.0.0.1", server.port, timeout=5)
    try:
        connection.send(method, "/v1/models", {"accept": "application/json"}, body)
        answer = connection.read_answer(method)
        _exchange.port = server.port  # the Host the request named
        return answer, server.requests[0]
    finally:
        connection.close()
        server.close()


def test_a_content_length_answer_and_the_request_it_answers() -> None:
    answer, request = _exchange(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
                                b"X-Request-Id: abc\r\n\r\n{\"models\":0}", "POST", b'{"a": 1}')  # fmt: skip
    assert (answer.status, answer.content, answer.will_close) == (200, b'{"models":0}', False)
    assert answer.headers.get("content-type") == "application/json" and answer.headers["x-request-id"] == "abc"
    assert dict(answer.headers) == {"content-type": "application/json", "content-length": "12", "x-request-id": "abc"}
    assert request == (f"POST /v1/models HTTP/1.1\r\nhost: 127.0.0.1:{_exchange.port}\r\naccept: application/json\r\n"
                       f"content-length: 8\r\n\r\n{{\"a\": 1}}").encode()  # fmt: skip


def test_chunked_answers_with_extensions_and_trailers() -> None:
    answer, _ = _exchange(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                          b"5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n")  # fmt: skip
    assert (answer.content, answer.will_close) == (b"hello, world", False)
    answer, _ = _exchange(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
    assert answer.content == b""


def test_a_body_framed_by_the_close_and_http_1_0() -> None:
    answer, _ = _exchange(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nto the end")
    assert (answer.content, answer.will_close) == (b"to the end", True)
    answer, _ = _exchange(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert (answer.content, answer.will_close) == (b"ok", True)
    answer, _ = _exchange(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\nConnection: Keep-Alive\r\n\r\nok")
    assert answer.will_close is False
    answer, _ = _exchange(b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    assert (answer.status, answer.content, answer.will_close) == (503, b"", True)


def test_interim_answers_are_skipped_and_bodiless_statuses_have_no_body() -> None:
    answer, _ = _exchange(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
                          b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nyes")  # fmt: skip
    assert (answer.status, answer.content) == (200, b"yes") and "link" not in answer.headers
    answer, _ = _exchange(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert (answer.status, answer.content, answer.will_close) == (204, b"", False)
    answer, _ = _exchange(b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n", method="HEAD")
    assert (answer.status, answer.content, answer.will_close) == (200, b"", False)
    answer, _ = _exchange(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")  # bare LF line ends, as http.client reads
    assert answer.content == b"ok"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", http.client.RemoteDisconnected),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", http.client.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\ncontent-le", http.client.IncompleteRead),
        (b"SSH-2.0-OpenSSH\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 2000 OK\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n", http.client.HTTPException),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\n" + b"x: y\r\n" * (MAX_HEADERS + 1) + b"\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nx: " + b"y" * 70_000, http.client.LineTooLong),
        (b"HTTP/1.1 200 OK\r\nx: " + b"y" * 70_000 + b"\r\n\r\n", http.client.LineTooLong),
    ],
)
def test_malformed_or_cut_answers_raise_http_client_errors(answer: bytes, error: type) -> None:
    server = _Canned(answer, None)
    connection = Connection("127.0.0.1", server.port, timeout=5)
    try:
        connection.send("GET", "/", {}, None)
        with pytest.raises(error):
            connection.read_answer("GET")
    finally:
        connection.close()
        server.close()


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    server = _Canned(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    connection = Connection("127.0.0.1", server.port, timeout=5)
    try:
        for headers, target in [({"x-request-id": "a\r\nevil: 1"}, "/"), ({"x": "a\nb"}, "/"), ({}, "/a\r\nb"),
                                ({"x": "nul\0"}, "/")]:  # fmt: skip
            with pytest.raises(ValueError, match="CR, LF or NUL"):
                connection.send("GET", target, headers, None)
        connection.send("GET", "/", {}, None)
        assert connection.read_answer("GET").status == 200
    finally:
        connection.close()
        server.close()
    assert len(server.requests) == 1  # the refused ones never left


def test_kept_alive_answers_in_a_row_and_a_connection_out_of_step_is_dropped() -> None:
    # Two answers on one connection; then one followed by bytes nobody asked for: that connection closes.
    server = _Canned(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na", b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
                     b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\ncEXTRA", None,
                     b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nd")  # fmt: skip
    pool = PlainHttpConnections("127.0.0.1", server.port)
    try:
        bodies = [pool.request("GET", "/", {}, None, 5)[2] for _ in range(4)]
    finally:
        pool.close()
        server.close()
    assert bodies == [b"a", b"b", b"c", b"d"] and server.connections == 2


def test_a_large_body_each_way() -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: the request in two writes, the answer read straight into place
    answer, request = _exchange(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(big), big), "POST", big)
    assert answer.content == big and request.endswith(b"\r\n\r\n" + big)


def test_headers_are_read_in_any_case_and_the_first_of_a_repeated_field_wins() -> None:
    headers = Headers([("Retry-After", "7"), ("retry-after", "9"), ("X-A", "1")])
    assert (headers.get("RETRY-AFTER"), headers["x-a"], headers.get("missing", "-"), len(headers)) == ("7", "1", "-", 2)
