"""The HTTP listening socket: accepted connections must have TCP_NODELAY (no Nagle wait per response)."""

from __future__ import annotations

import asyncio
import socket

from dualdistill_server.main import _bind


def test_accepted_http_connections_have_nodelay() -> None:
    """asyncio turns TCP_NODELAY on only for sockets whose proto is IPPROTO_TCP. Without it, a response's
    head and body leave as two segments and Nagle holds the body until the client's delayed ACK (about
    40 ms per request on a kept-alive connection)."""

    async def main() -> int:
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        listening = _bind("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
        _, writer = await asyncio.open_connection("127.0.0.1", listening.getsockname()[1])
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) != 0
