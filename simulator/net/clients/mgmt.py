"""The Front End's management clients: the CMS replication push (HTTPS 4443, I8) and the CLS controller's
query (MTLS 50001-50003, I9-I11), both over mutual TLS to a node's internal interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl

import h11

from simulator.net.transport.tls import classify_tls_error, open_tls
from simulator.outcome import ProbeFailure, Reason
from simulator.wire import cms
from simulator.wire.cls import ClsQuery, ClsReply, parse_reply
from simulator.wire.errors import MalformedMessage

# ---------------------------------------------------------------------------------------------- clients


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def cls_query(host: str, port: int, context: ssl.SSLContext, server_name: str, token: str,
                    timeout: float, *, source: str | None = None) -> ClsReply:
    """One CLS query over mutual TLS; raises :class:`ProbeFailure` with the reason when it fails."""
    reader, writer = await open_tls(host, port, context, server_name, timeout, source=source)
    try:
        writer.write(ClsQuery(token).serialize())
        await writer.drain()
        line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
        reply = parse_reply(line)
    except (OSError, ssl.SSLError, TimeoutError) as error:
        raise ProbeFailure(classify_tls_error(error), f"{host}:{port}: {error}") from None
    except asyncio.IncompleteReadError:
        raise ProbeFailure(Reason.RESET, f"{host}:{port}: closed before a reply") from None
    except asyncio.LimitOverrunError:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{host}:{port}: reply line too long") from None
    except MalformedMessage as error:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{host}:{port}: {error.reason}") from None
    finally:
        await _close(writer)
    if reply.status == 403:
        reason = Reason(reply.fields[0]) if reply.fields and reply.fields[0] in set(Reason) else Reason.REJECTED
        raise ProbeFailure(reason, f"{host}:{port}: refused by the agent ({' '.join(reply.fields)})")
    if reply.status != 200 or len(reply.fields) != 3 or reply.fields[2] != token:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{host}:{port}: unexpected reply {reply}")
    return reply


async def cms_push(host: str, port: int, context: ssl.SSLContext, server_name: str, document: bytes,
                   timeout: float, *, source: str | None = None) -> dict[str, object]:
    """Push a configuration document to the CMS replica; returns its JSON acknowledgement."""
    reader, writer = await open_tls(host, port, context, server_name, timeout, source=source)
    connection = h11.Connection(h11.CLIENT)
    try:
        request = h11.Request(method="POST", target=cms.REPLICATION_PATH.decode(), headers=[
            ("Host", server_name), ("Content-Type", "application/xml"), ("Content-Length", str(len(document))),
            ("Connection", "close")])
        writer.write((connection.send(request) or b"") + (connection.send(h11.Data(data=document)) or b"")
                     + (connection.send(h11.EndOfMessage()) or b""))
        await writer.drain()
        response: h11.Response | None = None
        body = bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await asyncio.wait_for(reader.read(65536), timeout))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    except (OSError, ssl.SSLError, TimeoutError) as error:
        raise ProbeFailure(classify_tls_error(error), f"{host}:{port}: {error}") from None
    except h11.RemoteProtocolError as error:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{host}:{port}: bad HTTP: {error}") from None
    finally:
        await _close(writer)
    if response is None:
        raise ProbeFailure(Reason.RESET, f"{host}:{port}: closed before a response")
    try:
        payload = json.loads(bytes(body))
    except ValueError:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{host}:{port}: response is not JSON") from None
    if not isinstance(payload, dict):
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{host}:{port}: response is not a JSON object")
    if response.status_code == 403:
        error_text = str(payload.get("error", ""))
        reason = Reason(error_text) if error_text in set(Reason) else Reason.REJECTED
        raise ProbeFailure(reason, f"{host}:{port}: refused by the replica ({error_text})")
    if response.status_code != 200:
        raise ProbeFailure(Reason.REJECTED, f"{host}:{port}: HTTP {response.status_code}")
    if payload.get("ack") != hashlib.sha256(document).hexdigest():
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{host}:{port}: acknowledgement does not match the document")
    return payload

