"""What a registrar refuses in a REGISTER that parsed (RFC 3261 §10.3), as pure functions.

The parser accepts any URI scheme in From and To (RFC 4475 §3.3.4: the message is syntactically valid and
parsers must not fail); only an element acting as a registrar refuses a non-SIP address of record.
"""

from __future__ import annotations

from simulator.wire.sip.message import SipRequest
from simulator.wire.sip.uri import SipUri


def registrar_address_problem(request: SipRequest) -> str | None:
    """Why a registrar must answer 400 to ``request``'s From/To addresses, or ``None`` when they are fine.

    RFC 3261 §10.2: To holds the address-of-record being registered and From the address-of-record of the
    party responsible; §6 defines an address-of-record as a SIP or SIPS URI. RFC 4475 §3.3.4: "A registrar
    would reject this request with a 400 Bad Request response, since the To: header field is required to
    contain a SIP or SIPS URI as an AOR." (416 is only for the Request-URI, RFC 3261 §8.2.2.1.)
    The caller answers 400 with the returned text as the reason.
    """
    for name, address in (("To", request.to), ("From", request.from_)):
        if not isinstance(address.uri, SipUri):
            shown = "*" if address.uri is None else address.uri.scheme
            return f"{name} is not a SIP or SIPS URI ({shown})"
    return None
