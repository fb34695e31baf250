"""A minimal HTTP/1.1 GET client (h11) for the CRL fetch probe (E3), sent from a chosen source address.
"""

from __future__ import annotations

import asyncio
import contextlib

import h11

MAX_RESPONSE = 1024 * 1024


async def http_get(host: str, port: int, path: str, host_header: str, timeout: float,
                   source: str | None = None) -> tuple[int, bytes]:
    """GET ``path``; returns (status, body). Raises OSError/TimeoutError/h11.RemoteProtocolError."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0) if source else None)
        try:
            connection = h11.Connection(h11.CLIENT)
            writer.write((connection.send(h11.Request(method="GET", target=path, headers=[
                ("Host", host_header), ("Connection", "close")])) or b"") + (connection.send(h11.EndOfMessage())
                                                                             or b""))
            await writer.drain()
            status = 0
            body = bytearray()
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_RESPONSE:
                        raise h11.RemoteProtocolError("response too large")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, bytes(body)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

