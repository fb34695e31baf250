"""Plain HTTP/1.1 (h11) for the lab's CRL distribution point (rule E3) and the client that fetches it."""

from __future__ import annotations

import asyncio

import h11

from simulator.net.transport.listener import TcpListener


class StaticHttpServer(TcpListener):
    """Serves a fixed set of documents (path → (content type, body)) on one address; 404 otherwise."""

    def __init__(self, host: str, port: int, documents: dict[str, tuple[str, bytes]]) -> None:
        super().__init__("http", host, port)
        self.documents = documents
        self.requests = 0
        self.malformed = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        request: h11.Request | None = None
        try:
            while request is None:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await asyncio.wait_for(reader.read(65536), 10)
                    if not data:
                        return
                    connection.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except h11.RemoteProtocolError as error:
            self.malformed += 1
            # h11 lets a server answer from IDLE when the request itself was bad.
            status, content_type, body = error.error_status_hint, "text/plain", b"bad request\n"
        else:
            self.requests += 1
            found = self.documents.get(request.target.decode("ascii", "replace"))
            if request.method not in (b"GET", b"HEAD"):
                status, content_type, body = 405, "text/plain", b"method not allowed\n"
            elif found is None:
                status, content_type, body = 404, "text/plain", b"not found\n"
            else:
                status, (content_type, body) = 200, found
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close")]
        writer.write((connection.send(h11.Response(status_code=status, headers=headers)) or b"")
                     + (connection.send(h11.Data(data=body)) or b"") + (connection.send(h11.EndOfMessage()) or b""))
        await writer.drain()

