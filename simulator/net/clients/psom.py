"""PSOM clients (synthetic records over real TLS): a Front End link's registration on an Edge's 8057 and a
remote client's JOIN through the Web Conferencing Edge's 443.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable

from simulator.net.transport.tls import classify_tls_error, open_tls
from simulator.outcome import ProbeFailure, Reason
from simulator.wire.errors import MalformedMessage
from simulator.wire.psom import PsomFramer, PsomRecord, PsomType

StreamOpener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def _one_record(reader: asyncio.StreamReader, framer: PsomFramer, where: str, timeout: float) -> PsomRecord:
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ProbeFailure(Reason.RESET, f"{where}: closed before an answer")
                records = framer.feed(data)
                if records:
                    return records[0]
    except (OSError, ssl.SSLError, TimeoutError) as error:
        raise ProbeFailure(classify_tls_error(error), f"{where}: {error}") from None
    except MalformedMessage as error:
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"{where}: {error.reason}") from None


async def psom_register(host: str, port: int, context: ssl.SSLContext, server_name: str, frontend: str,
                        timeout: float, *, source: str | None = None) -> tuple[asyncio.StreamReader,
                                                                               asyncio.StreamWriter]:
    """Open one Front End link to an Edge's 8057 and register it; returns the open stream pair."""
    reader, writer = await open_tls(host, port, context, server_name, timeout, source=source)
    try:
        writer.write(PsomRecord(PsomType.REGISTER, frontend.encode()).serialize())
        await writer.drain()
        answer = await _one_record(reader, PsomFramer(), f"{host}:{port}", timeout)
    except BaseException:
        writer.close()
        raise
    if answer.type is not PsomType.REGISTERED:
        writer.close()
        reason = Reason(answer.text) if answer.type is PsomType.ERROR and answer.text in set(Reason) \
            else Reason.REJECTED
        raise ProbeFailure(reason, f"{host}:{port}: {answer.type.name} {answer.text}")
    return reader, writer


async def psom_join(host: str, port: int, context: ssl.SSLContext, server_name: str, key: str,
                    timeout: float, *, opener: StreamOpener | None = None) -> str:
    """A remote client joins a conference through the Web Conferencing Edge; returns ``node/frontend``.

    ``opener`` opens the TLS connection itself (a client behind its NAT box); TLS failures still come back
    as :class:`ProbeFailure` with their reason.
    """
    if opener is None:
        reader, writer = await open_tls(host, port, context, server_name, timeout)
    else:
        try:
            reader, writer = await opener()
        except (OSError, ssl.SSLError, TimeoutError) as error:
            raise ProbeFailure(classify_tls_error(error), f"{host}:{port}: {error}") from None
    try:
        writer.write(PsomRecord(PsomType.JOIN, key.encode()).serialize())
        await writer.drain()
        answer = await _one_record(reader, PsomFramer(), f"{host}:{port}", timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    if answer.type is not PsomType.JOINED:
        raise ProbeFailure(Reason.REJECTED, f"{host}:{port}: {answer.type.name} {answer.text}")
    return answer.text

