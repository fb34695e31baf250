"""TLS contexts for the lab's listeners and clients, and how TLS failures become reason codes."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

from simulator.outcome import ProbeFailure, Reason

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) a verifier reports, mapped to our reason codes.
_VERIFY_REASONS: dict[int, Reason] = {
    9: Reason.EXPIRED,  # X509_V_ERR_CERT_NOT_YET_VALID
    10: Reason.EXPIRED,  # X509_V_ERR_CERT_HAS_EXPIRED
    2: Reason.UNTRUSTED,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18: Reason.UNTRUSTED,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19: Reason.UNTRUSTED,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20: Reason.UNTRUSTED,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: Reason.UNTRUSTED,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    23: Reason.REVOKED,  # X509_V_ERR_CERT_REVOKED
    62: Reason.WRONG_SAN,  # X509_V_ERR_HOSTNAME_MISMATCH
}
# Alerts the peer sent us (RFC 8446 §6.2), as OpenSSL names them in SSLError.reason.
_ALERT_REASONS: dict[str, Reason] = {
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": Reason.EXPIRED,
    "SSLV3_ALERT_CERTIFICATE_REVOKED": Reason.REVOKED,
    "TLSV1_ALERT_UNKNOWN_CA": Reason.UNTRUSTED,
    "SSLV3_ALERT_BAD_CERTIFICATE": Reason.BAD_CERTIFICATE,
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": Reason.BAD_CERTIFICATE,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": Reason.BAD_CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": Reason.BAD_CERTIFICATE,
}


# Where every context made below writes its TLS secrets (NSS key log format, for Wireshark): the SSLKEYLOGFILE
# environment variable, as browsers and curl honour it, or ``--keylog`` (set_keylog_file) before any context is made.
_keylog_file: str | None = os.environ.get("SSLKEYLOGFILE") or None


def set_keylog_file(path: str | os.PathLike[str] | None) -> None:
    """Make every client and server context built from now on append its TLS secrets to ``path`` (None: stop).

    Set as SSLKEYLOGFILE too, so the worker processes started from now on (``--workers``) write the same file.
    """
    global _keylog_file
    _keylog_file = None if path is None else os.fspath(path)
    if _keylog_file is None:
        os.environ.pop("SSLKEYLOGFILE", None)
    else:
        os.environ["SSLKEYLOGFILE"] = _keylog_file


def keylog_file() -> str | None:
    """The key log file new contexts write to, if any."""
    return _keylog_file


def classify_tls_error(error: BaseException) -> Reason:
    """The reason code for a failed TLS handshake or a TLS alert received later."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(error.verify_code, Reason.BAD_CERTIFICATE)
    if isinstance(error, ssl.SSLError):
        return _ALERT_REASONS.get(str(error.reason), Reason.TLS_ALERT)
    if isinstance(error, ConnectionRefusedError):
        return Reason.REFUSED
    if isinstance(error, TimeoutError):
        return Reason.TIMEOUT
    if isinstance(error, ConnectionError | EOFError):
        return Reason.RESET
    return Reason.PROTOCOL_ERROR


def server_context(cert_chain: Path, key: Path, ca: Path, crl: Path | None = None,
                   require_client_cert: bool = True) -> ssl.SSLContext:
    """A listener's context; with ``require_client_cert`` it is mutual TLS, checked against the CRL."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if _keylog_file is not None:
        context.keylog_filename = _keylog_file
    context.load_cert_chain(cert_chain, key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=ca)
        if crl is not None:
            context.load_verify_locations(cafile=crl)
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def client_context(ca: Path, cert_chain: Path | None = None, key: Path | None = None,
                   crl: Path | None = None) -> ssl.SSLContext:
    """A client's context: the server must present a lab-CA certificate naming the host we dialled."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if _keylog_file is not None:
        context.keylog_filename = _keylog_file
    context.load_verify_locations(cafile=ca)
    if crl is not None:
        context.load_verify_locations(cafile=crl)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    if cert_chain is not None and key is not None:
        context.load_cert_chain(cert_chain, key)
    return context


def peer_dns_names(peercert: object) -> set[str]:
    """DNS names of a verified peer certificate (``SSLObject.getpeercert()`` form), lower-cased."""
    names: set[str] = set()
    if isinstance(peercert, dict):
        for kind, value in peercert.get("subjectAltName", ()):
            if kind == "DNS":
                names.add(str(value).lower())
    return names


async def open_tls(host: str, port: int, context: ssl.SSLContext, server_name: str, timeout: float, *,
                   source: str | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client TLS connection from ``source`` whose failure is a :class:`ProbeFailure` with the TLS reason."""
    try:
        return await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=context, server_hostname=server_name, ssl_handshake_timeout=timeout,
            local_addr=(source, 0) if source else None), timeout)
    except (OSError, ssl.SSLError, TimeoutError) as error:
        raise ProbeFailure(classify_tls_error(error), f"{host}:{port}: {error}") from None
