"""The lab PKI verifies with openssl; each negative variant fails for its own reason."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from simulator.lab.pki import LabPki, build_pki
from simulator.spec.schema import CertificateVariant, Scenario
from tests.peers import require_tool


@pytest.fixture(scope="module")
def pki(shipped_scenario: Scenario) -> LabPki:
    return build_pki(shipped_scenario)


def _verify(folder: Path, stem: str, crl: bool = True) -> subprocess.CompletedProcess[str]:
    openssl = require_tool("openssl")
    args = [openssl, "verify", "-CAfile", str(folder / "ca.pem")]
    if crl:
        args += ["-crl_check", "-CRLfile", str(folder / "crl.pem")]
    # Only the leaf: the chain file also holds the issuer, which openssl must find in -CAfile on its own.
    leaf = folder / f"{stem}.leaf.pem"
    leaf.write_bytes((folder / f"{stem}.pem").read_bytes().split(b"-----END CERTIFICATE-----")[0]
                     + b"-----END CERTIFICATE-----\n")
    return subprocess.run([*args, str(leaf)], capture_output=True, text=True, check=False)


def test_valid_chains_verify_with_openssl(pki: LabPki, tmp_path: Path) -> None:
    files = pki.write(tmp_path)
    names = sorted({name for name, _ in pki.identities})
    assert {"edge-external", "edge-internal", "frontend", "director", "fabrikam", "pic-live",
            "xmpp-jabber"} <= set(names)
    for name in names:
        result = _verify(files.folder, name)
        assert result.returncode == 0 and ": OK" in result.stdout, (name, result.stdout, result.stderr)


@pytest.mark.parametrize(("variant", "openssl_error"), [
    (CertificateVariant.EXPIRED, "certificate has expired"),
    (CertificateVariant.UNTRUSTED, "unable to get local issuer certificate"),
    (CertificateVariant.REVOKED, "certificate revoked"),
])
def test_negative_variants_fail_openssl_verify(pki: LabPki, tmp_path: Path, variant: CertificateVariant,
                                               openssl_error: str) -> None:
    files = pki.write(tmp_path)
    result = _verify(files.folder, f"frontend.{variant}")
    assert result.returncode != 0
    assert openssl_error in result.stdout + result.stderr


def test_wrong_san_variant_names_another_host(pki: LabPki, tmp_path: Path) -> None:
    files = pki.write(tmp_path)
    assert _verify(files.folder, "frontend.wrong-san").returncode == 0  # trusted, but for the wrong name
    openssl = require_tool("openssl")
    good = subprocess.run([openssl, "verify", "-CAfile", str(files.ca), "-verify_hostname", "fepool.contoso.local",
                           str(files.folder / "frontend.pem")], capture_output=True, text=True, check=False)
    bad = subprocess.run([openssl, "verify", "-CAfile", str(files.ca), "-verify_hostname", "fepool.contoso.local",
                          str(files.folder / "frontend.wrong-san.pem")], capture_output=True, text=True, check=False)
    assert good.returncode == 0
    assert bad.returncode != 0 and "hostname mismatch" in bad.stdout + bad.stderr


def test_server_certificates_carry_the_pool_names(pki: LabPki) -> None:
    def sans(name: str) -> list[str]:
        cert = x509.load_pem_x509_certificate(pki.identity(name).cert_pem)
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)

    assert sans("edge-external") == ["sip.contoso.com", "webconf.contoso.com", "av.contoso.com", "contoso.com"]
    assert sans("edge-internal") == ["edgepool-int.contoso.local", "edge1-int.contoso.local",
                                     "edge2-int.contoso.local"]
    assert sans("fabrikam") == ["sip.fabrikam.com", "fabrikam.com"]


def test_crl_lists_exactly_the_revoked_variants(pki: LabPki) -> None:
    crl = x509.load_pem_x509_crl(pki.crl_pem)
    revoked = {entry.serial_number for entry in crl}
    expected = {identity.serial for (_, variant), identity in pki.identities.items()
                if variant is CertificateVariant.REVOKED}
    assert revoked == expected and len(expected) == 7
    root = x509.load_pem_x509_certificate(pki.root_cert_pem)
    assert crl.is_signature_valid(root.public_key())


def test_private_keys_are_not_world_readable(pki: LabPki, tmp_path: Path) -> None:
    files = pki.write(tmp_path)
    for key in files.folder.glob("*.key"):
        assert key.stat().st_mode & 0o077 == 0, key
