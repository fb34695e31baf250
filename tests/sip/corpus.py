# ruff: noqa: E501 — literal wire messages keep their real (long) header lines
"""Real-looking Lync 2013 remote-user traffic through the Access Edge (research §1.3, §4.1).

Each entry is a literal message; ``wire()`` turns its LF line ends into CRLF and fills the
Content-Length from the body, so the bytes are exactly what a client or the Edge puts on the wire.
"""

from __future__ import annotations

_PROVISIONING_BODY = """\
<provisionGroupList xmlns="http://schemas.microsoft.com/2006/09/sip/provisiongrouplist-notification">
<provisionGroup name="ServerConfiguration"><propertyEntryList>
<property name="mrasUri">sip:alice@contoso.com;gruu;opaque=srvr:MRAS:2Pxr8yQ1U0G4F1s9XmV7zgAA</property>
<property name="absInternalServerUrl">https://pool01.contoso.local/abs/int/handler</property>
<property name="absExternalServerUrl">https://webext.contoso.com/abs/ext/handler</property>
</propertyEntryList></provisionGroup>
</provisionGroupList>"""

_ROAMING_SELF_BODY = """\
<roamingData xmlns="http://schemas.microsoft.com/2006/09/sip/roaming-self">
<categories xmlns="http://schemas.microsoft.com/2006/09/sip/categories" uri="sip:alice@contoso.com">
<category name="note" instance="0" publishTime="2024-03-01T10:00:00.000Z" container="400" version="1" expireType="static">
<note xmlns="http://schemas.microsoft.com/2006/09/sip/note"><body type="personal" uri="">In the lab</body></note>
</category>
</categories>
</roamingData>"""

_MRAS_REQUEST_BODY = (
    '<request requestID="35112960" from="sip:alice@contoso.com" version="1.0" '
    'to="sip:alice@contoso.com;gruu;opaque=srvr:MRAS:2Pxr8yQ1U0G4F1s9XmV7zgAA" '
    'xmlns="http://schemas.microsoft.com/2006/09/sip/mrasp" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    '<credentialsRequest credentialsRequestID="35112960">'
    "<identity>sip:alice@contoso.com</identity><location>internet</location><duration>480</duration>"
    "</credentialsRequest></request>"
)

_MRAS_RESPONSE_BODY = (
    '<response xmlns="http://schemas.microsoft.com/2006/09/sip/mrasp" requestID="35112960" version="1.0" '
    'serverVersion="2" to="sip:alice@contoso.com;gruu;opaque=srvr:MRAS:2Pxr8yQ1U0G4F1s9XmV7zgAA" '
    'from="sip:alice@contoso.com" reasonPhrase="OK">'
    '<credentialsResponse credentialsRequestID="35112960">'
    "<credentials><username>AgAAJGjRWwEB1Z3rFh0ErPdXoRRWHk7fi5uTAbMHaxwAAAAAQhqBCJYM8xK5dfS0Jn5GMXtD=</username>"
    "<password>f0zRJHRvTK3Xzx0Ysd6xbv7eUhU=</password><duration>480</duration></credentials>"
    "<mediaRelayList>"
    "<mediaRelay><location>internet</location><hostName>av.contoso.com</hostName>"
    "<udpPort>3478</udpPort><tcpPort>443</tcpPort></mediaRelay>"
    "<mediaRelay><location>intranet</location><hostName>edge01.contoso.local</hostName>"
    "<udpPort>3478</udpPort><tcpPort>443</tcpPort></mediaRelay>"
    "</mediaRelayList></credentialsResponse></response>"
)

_SDP = """\
v=0
o=- 0 0 IN IP4 192.168.1.10
s=session
c=IN IP4 192.168.1.10
t=0 0
m=message 5060 sip null
a=accept-types:text/plain multipart/alternative image/gif text/rtf text/html application/x-ms-ink
"""

MESSAGES: dict[str, tuple[str, str]] = {
    "register-initial": (
        """\
REGISTER sip:contoso.com SIP/2.0
Via: SIP/2.0/TLS 192.168.1.10:50123;branch=z9hG4bK5b4a3928
Max-Forwards: 70
From: <sip:alice@contoso.com>;tag=7d2ea2b1f5;epid=3c5e0b1a2d
To: <sip:alice@contoso.com>
Call-ID: 9f5d3a1b2c4e4f6a8b0c1d2e3f405162
CSeq: 1 REGISTER
Contact: <sip:192.168.1.10:50123;transport=tls;ms-opaque=d3470f2e1d>;methods="INVITE, MESSAGE, INFO, SUBSCRIBE, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY";proxy=replace;+sip.instance="<urn:uuid:6f1b9f0e-4c1a-5d2b-9e3f-0a1b2c3d4e5f>"
User-Agent: UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)
Supported: gruu-10, adhoclist, msrtc-event-categories, com.microsoft.msrtc.presence
Supported: ms-forking
Supported: ms-cluster-failover
Supported: ms-userservices-state-notification
ms-keep-alive: UAC;hop-hop=yes
Event: registration
Content-Length: 0
""",
        "",
    ),
    "register-401": (
        """\
SIP/2.0 401 Unauthorized
Date: Fri, 01 Mar 2024 10:00:00 GMT
WWW-Authenticate: NTLM realm="SIP Communications Service", targetname="edge01.contoso.com", version=4
WWW-Authenticate: TLS-DSK realm="SIP Communications Service", targetname="edge01.contoso.com", version=4, sts-uri="https://pool01.contoso.com:443/CertProv/CertProvisioningService.svc"
WWW-Authenticate: Digest realm="contoso.com", nonce="1a2b3c4d5e6f708192a3b4c5d6e7f809", opaque="0123456789abcdef", algorithm=MD5, qop="auth"
From: <sip:alice@contoso.com>;tag=7d2ea2b1f5;epid=3c5e0b1a2d
To: <sip:alice@contoso.com>;tag=A1B2C3D4E5F60718293A4B5C6D7E8F90
Call-ID: 9f5d3a1b2c4e4f6a8b0c1d2e3f405162
CSeq: 1 REGISTER
Via: SIP/2.0/TLS 192.168.1.10:50123;branch=z9hG4bK5b4a3928;received=203.0.113.45;ms-received-port=50123;ms-received-cid=1A2B00
Server: RTC/5.0
Content-Length: 0
""",
        "",
    ),
    "register-digest": (
        """\
REGISTER sip:contoso.com SIP/2.0
Via: SIP/2.0/TLS 192.168.1.10:50123;branch=z9hG4bK8a7d6c5b
Max-Forwards: 70
From: <sip:alice@contoso.com>;tag=7d2ea2b1f5;epid=3c5e0b1a2d
To: <sip:alice@contoso.com>
Call-ID: 9f5d3a1b2c4e4f6a8b0c1d2e3f405162
CSeq: 2 REGISTER
Contact: <sip:192.168.1.10:50123;transport=tls;ms-opaque=d3470f2e1d>;methods="INVITE, MESSAGE, INFO, SUBSCRIBE, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY";proxy=replace;+sip.instance="<urn:uuid:6f1b9f0e-4c1a-5d2b-9e3f-0a1b2c3d4e5f>"
Authorization: Digest username="alice", realm="contoso.com", nonce="1a2b3c4d5e6f708192a3b4c5d6e7f809", uri="sip:contoso.com", response="6d1b5e0c8b1f2a3e4d5c6b7a8f9e0d1c", algorithm=MD5, qop=auth, nc=00000001, cnonce="0a4f113b", opaque="0123456789abcdef"
Supported: gruu-10, adhoclist, msrtc-event-categories, com.microsoft.msrtc.presence
ms-keep-alive: UAC;hop-hop=yes
Event: registration
Content-Length: 0
""",
        "",
    ),
    "register-200": (
        """\
SIP/2.0 200 OK
ms-keep-alive: UAS; tcp=no; hop-hop=yes; end-end=no; timeout=300
Authentication-Info: NTLM rspauth="01000000000000005D2F1A3B4C5D6E7F", srand="3A5C7E91", snum="1", opaque="7F8E9D0C", qop="auth", targetname="edge01.contoso.com", realm="SIP Communications Service"
From: <sip:alice@contoso.com>;tag=7d2ea2b1f5;epid=3c5e0b1a2d
To: <sip:alice@contoso.com>;tag=A1B2C3D4E5F60718293A4B5C6D7E8F90
Call-ID: 9f5d3a1b2c4e4f6a8b0c1d2e3f405162
CSeq: 2 REGISTER
Via: SIP/2.0/TLS 192.168.1.10:50123;branch=z9hG4bK8a7d6c5b;received=203.0.113.45;ms-received-port=50123;ms-received-cid=1A2B00
Contact: <sip:192.168.1.10:50123;transport=tls;ms-opaque=d3470f2e1d;ms-received-cid=1A2B00>;expires=7200;+sip.instance="<urn:uuid:6f1b9f0e-4c1a-5d2b-9e3f-0a1b2c3d4e5f>";gruu="sip:alice@contoso.com;opaque=user:epid:Gm8Cj1rRQVm2xn5dHc3RwQAA;gruu"
Expires: 7200
presence-state: register-action="added"
Allow-Events: vnd-microsoft-provisioning,vnd-microsoft-roaming-contacts,vnd-microsoft-roaming-ACL,presence,presence.wpending,vnd-microsoft-roaming-self,vnd-microsoft-provisioning-v2
Supported: adhoclist
Server: RTC/5.0
Supported: msrtc-event-categories
ms-user-logon-data: RemoteUser
Content-Length: 0
""",
        "",
    ),
    "subscribe-provisioning": (
        """\
SUBSCRIBE sip:alice@contoso.com SIP/2.0
Via: SIP/2.0/TLS 192.168.1.10:50123;branch=z9hG4bK1f2e3d4c
Max-Forwards: 70
From: <sip:alice@contoso.com>;tag=5a6b7c8d9e;epid=3c5e0b1a2d
To: <sip:alice@contoso.com>
Call-ID: 0a1b2c3d4e5f60718293a4b5c6d7e8f9
CSeq: 1 SUBSCRIBE
Contact: <sip:alice@contoso.com;opaque=user:epid:Gm8Cj1rRQVm2xn5dHc3RwQAA;gruu>
User-Agent: UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)
Event: vnd-microsoft-provisioning-v2
Accept: application/vnd-microsoft-roaming-provisioning-v2+xml
Supported: com.microsoft.autoextend
Supported: ms-benotify
Proxy-Require: ms-benotify
Supported: ms-piggyback-first-notify
Proxy-Authorization: NTLM qop="auth", realm="SIP Communications Service", opaque="7F8E9D0C", crand="1b2c3d4e", cnum="1", targetname="edge01.contoso.com", response="0100000039f4c3b2a1908f7e00000000"
Content-Type: application/vnd-microsoft-roaming-provisioning-v2+xml
Content-Length: {length}
""",
        '<provisioningGroupList xmlns="http://schemas.microsoft.com/2006/09/sip/provisioninggrouplist">'
        '<provisioningGroup name="ServerConfiguration"/><provisioningGroup name="meetingPolicy"/>'
        '<provisioningGroup name="ucPolicy"/></provisioningGroupList>',
    ),
    "subscribe-200-provisioning": (
        """\
SIP/2.0 200 OK
Via: SIP/2.0/TLS 192.168.1.10:50123;branch=z9hG4bK1f2e3d4c;ms-received-port=50123;ms-received-cid=1A2B00
From: <sip:alice@contoso.com>;tag=5a6b7c8d9e;epid=3c5e0b1a2d
To: <sip:alice@contoso.com>;tag=8F7E6D5C4B3A2918
Call-ID: 0a1b2c3d4e5f60718293a4b5c6d7e8f9
CSeq: 1 SUBSCRIBE
Contact: <sip:pool01.contoso.com:5061;transport=tls>
Expires: 0
Event: vnd-microsoft-provisioning-v2
subscription-state: terminated;expires=0
ms-piggyback-cseq: 1
Supported: ms-benotify, ms-piggyback-first-notify
Content-Type: application/vnd-microsoft-roaming-provisioning-v2+xml
Content-Length: {length}
""",
        _PROVISIONING_BODY,
    ),
    "notify-roaming-self": (
        """\
NOTIFY sip:192.168.1.10:50123;transport=tls;ms-opaque=d3470f2e1d;ms-received-cid=1A2B00;grid SIP/2.0
Via: SIP/2.0/TLS 10.0.0.21:5061;branch=z9hG4bK4D3C2B1A.9E8F7A6B5C4D3E2F;branched=FALSE;ms-internal-info="dbYwzOtQqNw1ZAA"
Authentication-Info: NTLM rspauth="010000000000000012AB34CD56EF7890", srand="9A8B7C6D", snum="7", opaque="7F8E9D0C", qop="auth", targetname="edge01.contoso.com", realm="SIP Communications Service"
Max-Forwards: 69
To: <sip:alice@contoso.com>;tag=3e4f5a6b7c;epid=3c5e0b1a2d
Content-Length: {length}
From: <sip:alice@contoso.com>;tag=0011223344
Call-ID: 7e6d5c4b3a29180f7e6d5c4b3a291800
CSeq: 3 NOTIFY
Require: eventlist
Content-Type: application/vnd-microsoft-roaming-self+xml
Event: vnd-microsoft-roaming-self
subscription-state: active;expires=41558
ms-diagnostics-public: 2;reason="See response code and reason phrase";source="edge01.contoso.com"
""",
        _ROAMING_SELF_BODY,
    ),
    "service-mras": (
        """\
SERVICE sip:alice@contoso.com;gruu;opaque=srvr:MRAS:2Pxr8yQ1U0G4F1s9XmV7zgAA SIP/2.0
Via: SIP/2.0/TLS 192.168.1.10:50123;branch=z9hG4bK6e5d4c3b
Max-Forwards: 70
From: <sip:alice@contoso.com>;tag=2b3c4d5e6f;epid=3c5e0b1a2d
To: <sip:alice@contoso.com;gruu;opaque=srvr:MRAS:2Pxr8yQ1U0G4F1s9XmV7zgAA>
Call-ID: 4c5d6e7f8091a2b3c4d5e6f708192a3b
CSeq: 1 SERVICE
Contact: <sip:alice@contoso.com;opaque=user:epid:Gm8Cj1rRQVm2xn5dHc3RwQAA;gruu>
User-Agent: UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)
Proxy-Authorization: NTLM qop="auth", realm="SIP Communications Service", opaque="7F8E9D0C", crand="5f6a7b8c", cnum="4", targetname="edge01.contoso.com", response="01000000a1b2c3d4e5f6a7b800000000"
Content-Type: application/msrtc-media-relay-auth+xml
Content-Length: {length}
""",
        _MRAS_REQUEST_BODY,
    ),
    "service-mras-200": (
        """\
SIP/2.0 200 OK
Authentication-Info: NTLM rspauth="0100000000000000A1B2C3D4E5F60718", srand="0F1E2D3C", snum="9", opaque="7F8E9D0C", qop="auth", targetname="edge01.contoso.com", realm="SIP Communications Service"
Via: SIP/2.0/TLS 192.168.1.10:50123;branch=z9hG4bK6e5d4c3b;ms-received-port=50123;ms-received-cid=1A2B00
From: <sip:alice@contoso.com>;tag=2b3c4d5e6f;epid=3c5e0b1a2d
To: <sip:alice@contoso.com;gruu;opaque=srvr:MRAS:2Pxr8yQ1U0G4F1s9XmV7zgAA>;tag=6A7B8C9D
Call-ID: 4c5d6e7f8091a2b3c4d5e6f708192a3b
CSeq: 1 SERVICE
Content-Type: application/msrtc-media-relay-auth+xml
Server: RTC/5.0
Content-Length: {length}
""",
        _MRAS_RESPONSE_BODY,
    ),
    "invite-im": (
        """\
INVITE sip:bob@fabrikam.com SIP/2.0
Via: SIP/2.0/TLS 192.168.1.10:50123;branch=z9hG4bK2c3d4e5f
Max-Forwards: 70
From: "Alice Example" <sip:alice@contoso.com>;tag=9a8b7c6d5e;epid=3c5e0b1a2d
To: <sip:bob@fabrikam.com>
Call-ID: 1f2e3d4c5b6a79880f1e2d3c4b5a6978
CSeq: 1 INVITE
Contact: <sip:alice@contoso.com;opaque=user:epid:Gm8Cj1rRQVm2xn5dHc3RwQAA;gruu>
User-Agent: UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)
Supported: ms-dialog-route-set-update
Ms-Conversation-ID: Ac9rZ2H0xgVbqYzZQmGx1Gk7o3W1Hg==
Supported: timer
Supported: histinfo
Supported: ms-safe-transfer
Supported: ms-sender
Supported: ms-early-media
Supported: 100rel
ms-keep-alive: UAC;hop-hop=yes
Allow: INVITE, BYE, ACK, CANCEL, INFO, MESSAGE, UPDATE, REFER, NOTIFY, BENOTIFY, OPTIONS
ms-subnet: 192.168.1.0
Accept-Language: en-US
ms-endpoint-location-data: NetworkScope;ms-media-location-type=Internet
Content-Type: application/sdp
Content-Length: {length}
""",
        _SDP,
    ),
    "message-im": (
        """\
MESSAGE sip:bob@fabrikam.com;opaque=user:epid:Qk2hbFxLW1qPZx7nZ0y7BAAA;gruu SIP/2.0
Via: SIP/2.0/TLS 192.168.1.10:50123;branch=z9hG4bK0d1e2f3a
Max-Forwards: 70
From: "Alice Example" <sip:alice@contoso.com>;tag=9a8b7c6d5e;epid=3c5e0b1a2d
To: <sip:bob@fabrikam.com>;tag=5e4d3c2b1a;epid=7c8d9e0f1a
Call-ID: 1f2e3d4c5b6a79880f1e2d3c4b5a6978
CSeq: 2 MESSAGE
Route: <sip:edge01.contoso.com:443;transport=tls;lr;ms-role-rs-to;ms-ent-dest>
Route: <sip:pool01.contoso.local:5061;transport=tls;lr;ms-role-rs-from>
Contact: <sip:alice@contoso.com;opaque=user:epid:Gm8Cj1rRQVm2xn5dHc3RwQAA;gruu>
User-Agent: UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)
Supported: ms-dialog-route-set-update
Ms-Conversation-ID: Ac9rZ2H0xgVbqYzZQmGx1Gk7o3W1Hg==
Supported: timer
Supported: ms-text-format
Content-Type: text/plain;charset=UTF-8;msgr=WAAtAE0ATQBTAC0ASQBNAC0ARgBvAHIAbQBhAHQAOgAgAEYATgA9AFMAZQBnAG8AZQAlADIAMABVAEkAOwAgAEUARgA9ADsAIABDAE8APQAwADsAIABDAFMAPQAwADsAIABQAEYAPQAwAAoADQAKAA0A
Content-Length: {length}
""",
        "Hello from the lab \u2014 caf\u00e9",
    ),
    "options-compact": (
        """\
OPTIONS sips:[2001:db8::10]:5061;transport=tls SIP/2.0
v: SIP/2.0/TLS [2001:db8::20]:50200;branch=z9hG4bKc0mpact;rport
v: SIP/2.0/TCP 198.51.100.7;branch=z9hG4bK0ther, SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKth1rd
Max-Forwards: 70
f: Monitor <sips:monitor@fabrikam.com>;tag=aa11
t: <sips:[2001:db8::10]:5061>
i: opt-7d0c4a92@198.51.100.7
CSeq: 42 OPTIONS
m: <sips:monitor@[2001:db8::20]:50200;transport=tls>
k: timer, 100rel
u: presence
o: presence
l: 0
""",
        "",
    ),
}


def wire(name: str) -> bytes:
    """The message as bytes on the wire."""
    head, body = MESSAGES[name]
    body_bytes = body.replace("\n", "\r\n").encode("utf-8")
    head = head.replace("{length}", str(len(body_bytes)))
    return head.replace("\n", "\r\n").encode("utf-8") + b"\r\n" + body_bytes


ALL: dict[str, bytes] = {name: wire(name) for name in MESSAGES}
