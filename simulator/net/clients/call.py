"""One SIP call of a lab user agent, the caller's side (RFC 3261 §13, §12, §14, §15): INVITE with an SDP offer,
the answer SDP from the 183 or the 200, ACK for the 2xx along the dialog's route set, re-INVITE, BYE.

The callee's side is :attr:`SipClient.on_invite <simulator.net.clients.sip_client.SipClient.on_invite>`:
``async def on_invite(offer_sdp, caller_uri) -> answer_sdp``; the client answers 183 then 200 with that SDP.

Through the lab a call goes caller → its Access Edge (443) → Director/Front End, which finds the callee's binding
(the Path its Edge added on REGISTER) → the Edge holding the callee's connection → callee; every proxy
Record-Routes, so ACK, re-INVITE and BYE take the same way. A callee with no binding answers 480.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.net.clients.sip_client import USER_AGENT, SipClient
from simulator.net.transport.sip_connection import diagnostic_reason
from simulator.outcome import ProbeFailure, Reason
from simulator.wire.sip import SipRequest, SipResponse, make_request, new_call_id, new_tag

SDP = "application/sdp"


class CallFailed(ProbeFailure):
    """A call's request got a final non-2xx response (``status``, e.g. 480), or none (``status`` 0)."""

    def __init__(self, reason: Reason, detail: str, status: int = 0) -> None:
        super().__init__(reason, detail)
        self.status = status


@dataclass
class SipCall:
    """The caller's dialog (RFC 3261 §12.1.2) once the INVITE got its 200."""

    client: SipClient
    caller_uri: str
    callee_uri: str
    call_id: str
    local_tag: str
    remote_to: str  # the To header of the 200 (callee's tag)
    remote_target: str  # the callee's Contact
    route_set: list[str]
    answer_sdp: str
    early_sdp: str | None = None
    status: int = 200
    cseq: int = 1
    provisional: list[int] = field(default_factory=list)  # statuses of the 1xx seen (not 100)

    @property
    def _from(self) -> str:
        return f"<{self.caller_uri}>;tag={self.local_tag}"

    @classmethod
    async def invite(cls, client: SipClient, callee_uri: str, offer_sdp: str, timeout: float, *,
                     caller_uri: str | None = None) -> SipCall:
        """INVITE ``callee_uri`` with ``offer_sdp``; the call once answered 200 (ACK sent). CallFailed otherwise.

        ``caller_uri``: the signed-in AOR (the From); by default the AOR of the client's last REGISTER is not known
        here, so pass it (RemoteUser.aor).
        """
        caller = caller_uri or "sip:anonymous@anonymous.invalid"
        rng = client.rng
        call_id, tag = new_call_id(rng), new_tag(rng)
        host, port = client.local
        request = make_request("INVITE", callee_uri, via=client.via(), from_=f"<{caller}>;tag={tag}",
                               to=f"<{callee_uri}>", call_id=call_id, cseq=1,
                               headers=[("User-Agent", USER_AGENT), ("Contact", f"<sip:{host}:{port};transport=tls>"),
                                        ("Content-Type", SDP)], body=offer_sdp.encode())
        early: list[SipResponse] = []
        response = await client.request(request, timeout, on_provisional=early.append)
        _check(response, "INVITE")
        early_sdp = next((r.body.decode("utf-8", "replace") for r in early if r.body and r.content_type == SDP), None)
        answer = response.body.decode("utf-8", "replace") if response.body else (early_sdp or "")
        contacts = response.contacts
        target = str(contacts[0].uri) if contacts and contacts[0].uri is not None else callee_uri
        call = cls(client, caller, callee_uri, call_id, tag, response.headers.get("to") or f"<{callee_uri}>",
                   target, list(reversed(response.headers.values("record-route"))), answer, early_sdp,
                   response.status, 1, [r.status for r in early])
        await call._ack()
        return call

    def _build(self, method: str, cseq: int, sdp: str | None = None) -> SipRequest:
        headers: list[tuple[str, str]] = [("Route", route) for route in self.route_set]
        headers.append(("User-Agent", USER_AGENT))
        if sdp is not None:
            host, port = self.client.local
            headers += [("Contact", f"<sip:{host}:{port};transport=tls>"), ("Content-Type", SDP)]
        return make_request(method, self.remote_target, via=self.client.via(), from_=self._from, to=self.remote_to,
                            call_id=self.call_id, cseq=cseq, headers=headers,
                            body=sdp.encode() if sdp is not None else b"")

    async def _ack(self) -> None:
        ack = self._build("ACK", self.cseq)  # same CSeq number as the INVITE (§13.2.2.4)
        await self.client.send(ack)

    async def reinvite(self, sdp: str, timeout: float) -> str:
        """re-INVITE with ``sdp`` (the selected candidate pair, MS-ICE2 §3.1.4.8.3); the answer SDP; ACK sent."""
        self.cseq += 1
        response = await self.client.request(self._build("INVITE", self.cseq, sdp), timeout)
        _check(response, "re-INVITE")
        if response.body:
            self.answer_sdp = response.body.decode("utf-8", "replace")
        await self._ack()
        return self.answer_sdp

    async def bye(self, timeout: float) -> SipResponse:
        """BYE; its 200."""
        self.cseq += 1
        response = await self.client.request(self._build("BYE", self.cseq), timeout)
        return _check(response, "BYE")


def _check(response: SipResponse, what: str) -> SipResponse:
    if 200 <= response.status < 300:
        return response
    server = response.headers.get("server") or "?"
    diagnostics = response.headers.get("ms-diagnostics") or ""
    raise CallFailed(diagnostic_reason(response) or Reason.REJECTED,
                     f"{what}: {response.status} {response.reason} from {server}"
                     + (f" ({diagnostics})" if diagnostics else ""), response.status)
