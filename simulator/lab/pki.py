"""The lab PKI: one root CA, the Edge's and every peer's certificates, a CRL, and negative variants.

Made with ``cryptography`` (no hand-written ASN.1). Keys are EC P-256: fast to make on every run and
accepted by every TLS stack the lab talks to. Names come from the scenario:

* ``edge-external`` — subject ``sip.<domain>``, SANs the pool's access, webconf and av names and the SIP
  domain (server and client auth: the Access Edge also opens MTLS 5061 to partners, the XMPP proxy 5269);
* ``edge-internal`` — subject the internal pool name, SANs the pool and every node's internal name;
* one identity per server-like peer (Front End, Director, federated/PIC partner Edge, XMPP partner) named
  by its ``fqdn``;
* for each identity the negative variants ``wrong-san`` (names ``wrong-<fqdn>``), ``expired``,
  ``untrusted`` (issued by a rogue CA the lab does not trust) and ``revoked`` (listed in the CRL).

``LabPki.write(folder)`` writes PEM files: ``ca.pem``, ``ca.key``, ``rogue-ca.pem``, ``crl.pem`` and
``<identity>[.<variant>].pem`` / ``.key`` (the certificate followed by its issuer).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from simulator.spec.schema import SERVER_ROLES, CertificateVariant, Scenario

_HASH = hashes.SHA256()


@dataclass(frozen=True, slots=True)
class Identity:
    """A certificate and its private key, PEM-encoded; ``chain_pem`` is the certificate then its issuer."""

    name: str
    variant: CertificateVariant
    names: tuple[str, ...]
    serial: int
    cert_pem: bytes
    key_pem: bytes
    chain_pem: bytes

    @property
    def file_stem(self) -> str:
        return self.name if self.variant is CertificateVariant.VALID else f"{self.name}.{self.variant}"


@dataclass(frozen=True, slots=True)
class PkiFiles:
    """Where :meth:`LabPki.write` put things."""

    folder: Path
    ca: Path
    rogue_ca: Path
    crl: Path

    def cert(self, name: str, variant: CertificateVariant = CertificateVariant.VALID) -> tuple[Path, Path]:
        """(certificate chain, key) paths of one identity."""
        stem = name if variant is CertificateVariant.VALID else f"{name}.{variant}"
        return self.folder / f"{stem}.pem", self.folder / f"{stem}.key"


@dataclass
class LabPki:
    root_cert_pem: bytes
    root_key_pem: bytes
    rogue_cert_pem: bytes
    crl_pem: bytes
    crl_url: str
    identities: dict[tuple[str, CertificateVariant], Identity] = field(default_factory=dict)

    def identity(self, name: str, variant: CertificateVariant = CertificateVariant.VALID) -> Identity:
        return self.identities[(name, variant)]

    def write(self, folder: str | Path) -> PkiFiles:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = PkiFiles(folder, folder / "ca.pem", folder / "rogue-ca.pem", folder / "crl.pem")
        files.ca.write_bytes(self.root_cert_pem)
        _write_private(folder / "ca.key", self.root_key_pem)
        files.rogue_ca.write_bytes(self.rogue_cert_pem)
        files.crl.write_bytes(self.crl_pem)
        for identity in self.identities.values():
            cert_path, key_path = files.cert(identity.name, identity.variant)
            cert_path.write_bytes(identity.chain_pem)
            _write_private(key_path, identity.key_pem)
        return files


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


@dataclass
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(common_name: str, now: dt.datetime) -> _Issuer:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgesim lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _HASH)
    )
    return _Issuer(name, key, cert)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _leaf(issuer: _Issuer, names: tuple[str, ...], not_before: dt.datetime, not_after: dt.datetime,
          crl_url: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgesim lab"),
                         x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer.name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                       critical=False)
        .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None, reasons=None,
            crl_issuer=None)]), critical=False)
        .sign(issuer.key, _HASH)
    )
    return cert, key


def crl_url_of(scenario: Scenario) -> str:
    """The CRL distribution point every lab certificate names (E3 fetches it)."""
    return f"http://crl.{scenario.domain}/lab-root.crl"


def identity_names(scenario: Scenario) -> dict[str, tuple[str, ...]]:
    """Identity name → the DNS names its certificate carries (first = subject CN)."""
    pool = scenario.edge_pool
    names: dict[str, tuple[str, ...]] = {
        # The SIP domain too: the XMPP proxy authenticates as it (XEP-0178).
        "edge-external": (pool.access_fqdn, pool.webconf_fqdn, pool.av_fqdn, scenario.domain),
        "edge-internal": (pool.internal_fqdn, *(n.internal_fqdn for n in pool.nodes if n.internal_fqdn)),
    }
    for client in scenario.clients:
        if client.role in SERVER_ROLES and client.fqdn is not None:
            extra = (client.domain,) if client.domain and client.domain != client.fqdn else ()
            names[client.name] = (client.fqdn, *extra)
    return names


def build_pki(scenario: Scenario, now: dt.datetime | None = None,
              variants: tuple[CertificateVariant, ...] = tuple(CertificateVariant)) -> LabPki:
    """Make the whole lab PKI for a scenario. ``now`` anchors validity (defaults to the current time)."""
    now = now or dt.datetime.now(dt.UTC)
    root = _ca("edgesim Lab Root CA", now)
    rogue = _ca("edgesim Rogue CA (untrusted)", now)
    crl_url = crl_url_of(scenario)
    pki = LabPki(root.cert.public_bytes(serialization.Encoding.PEM), _key_pem(root.key),
                 rogue.cert.public_bytes(serialization.Encoding.PEM), b"", crl_url)
    revoked: list[int] = []
    valid_from, valid_to = now - dt.timedelta(hours=1), now + dt.timedelta(days=90)
    for name, dns_names in identity_names(scenario).items():
        for variant in variants:
            issuer, names, not_before, not_after = root, dns_names, valid_from, valid_to
            if variant is CertificateVariant.WRONG_SAN:
                names = tuple(f"wrong-{n}" for n in dns_names)
            elif variant is CertificateVariant.EXPIRED:
                not_before, not_after = now - dt.timedelta(days=60), now - dt.timedelta(days=1)
            elif variant is CertificateVariant.UNTRUSTED:
                issuer = rogue
            cert, key = _leaf(issuer, names, not_before, not_after, crl_url)
            if variant is CertificateVariant.REVOKED:
                revoked.append(cert.serial_number)
            cert_pem = cert.public_bytes(serialization.Encoding.PEM)
            chain = cert_pem + issuer.cert.public_bytes(serialization.Encoding.PEM)
            pki.identities[(name, variant)] = Identity(name, variant, names, cert.serial_number, cert_pem,
                                                       _key_pem(key), chain)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(root.name)
               .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=7)))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - dt.timedelta(minutes=5))
            .build())
    pki.crl_pem = builder.sign(root.key, _HASH).public_bytes(serialization.Encoding.PEM)
    return pki


class PkiFolderError(Exception):
    """A PKI folder given with ``--pki`` lacks a file the scenario needs (one line, no traceback)."""


def read_pki(scenario: Scenario, folder: str | Path) -> tuple[LabPki, PkiFiles]:
    """The lab PKI that ``edgesim certs`` wrote to ``folder``, so every host of a split lab shares one CA.

    Checks that the folder holds the CA, the CRL and every identity (valid and each variant) the scenario's
    listeners and peers present; raises :class:`PkiFolderError` naming the first missing file.
    """
    folder = Path(folder)
    files = PkiFiles(folder, folder / "ca.pem", folder / "rogue-ca.pem", folder / "crl.pem")
    needed = [files.ca, files.rogue_ca, files.crl, folder / "ca.key"]
    for name in identity_names(scenario):
        for variant in CertificateVariant:
            needed.extend(files.cert(name, variant))
    for path in needed:
        if not path.is_file():
            raise PkiFolderError(f"{path}: missing (write the lab PKI with `edgesim certs --scenario FILE --out "
                                 f"{folder}` and copy the folder to every host)")
    pki = LabPki(files.ca.read_bytes(), (folder / "ca.key").read_bytes(), files.rogue_ca.read_bytes(),
                 files.crl.read_bytes(), crl_url_of(scenario))
    return pki, files
