"""The ingress HTTPS listener's TLS settings, as a real scanner (sslyze) sees them.

An in-process :class:`IngressServer` listens with a :class:`CertStore`'s
context (the one ``netplane run`` gives its HTTPS listener); the handshake's
SNI name picks a certificate built by ``load_certificate``, the context the
Gateway HTTPS sockets switch to as well. Both come from ``new_context()``.
The scan runs once per certificate key type: with an RSA certificate a
server could also offer static-RSA key exchange, with ECDSA it cannot.

The verdict: TLS 1.2 and 1.3 only; TLS 1.2 suites ECDHE with AEAD only (no
RC4, 3DES, NULL, EXPORT, anonymous, CBC or static RSA); no client-initiated
renegotiation; no compression; and Mozilla's "intermediate" profile met but
for the test CA's trust and two strong extra curves (X448, P-521), which
Python's ssl module cannot turn off without keeping a single curve.
The summary is printed (``pytest -s``) for the README.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import trustme
from ingress_fakes import FakeRoutes
from netplane.ingress.certs import CertStore

sslyze = pytest.importorskip("sslyze")

from nassl.ephemeral_key_info import DhEphemeralKeyInfo, EcDhEphemeralKeyInfo  # noqa: E402
from sslyze.mozilla_tls_profile.tls_config_checker import (  # noqa: E402
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

pytestmark = [
    pytest.mark.e2e,
    # sslyze loads its bundled trust stores, where one root has a non-positive serial.
    pytest.mark.filterwarnings(
        "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
    ),
]

SNI = "scan.test"
VERSIONS = [
    ("SSL 2.0", "ssl_2_0_cipher_suites"),
    ("SSL 3.0", "ssl_3_0_cipher_suites"),
    ("TLS 1.0", "tls_1_0_cipher_suites"),
    ("TLS 1.1", "tls_1_1_cipher_suites"),
    ("TLS 1.2", "tls_1_2_cipher_suites"),
    ("TLS 1.3", "tls_1_3_cipher_suites"),
]
# What a TLS 1.2 suite may use: ECDHE key exchange, an AEAD cipher.
WEAK = ("RC4", "3DES", "DES", "NULL", "EXPORT", "anon", "CBC", "MD5", "IDEA", "SEED", "CAMELLIA")
# Issues of Mozilla's profile that this scan accepts, and why.
ACCEPTED_MOZILLA = {
    "certificate_path_validation": "the test's trustme CA is in no trust store",
    "maximum_certificate_lifespan": "trustme issues long-lived test leaves",
    "tls_curves": "X448 and P-521 offered beside X25519, P-256, P-384",
}
STRONG_EXTRA_CURVES = {"X448", "secp521r1"}


def scan(port: int) -> Any:
    """One sslyze scan of 127.0.0.1:port with SNI ``SNI``, every command the checks need."""
    commands = {
        *(sslyze.ScanCommand(field) for _, field in VERSIONS),
        sslyze.ScanCommand.SESSION_RENEGOTIATION,
        sslyze.ScanCommand.TLS_COMPRESSION,
        sslyze.ScanCommand.ELLIPTIC_CURVES,
        sslyze.ScanCommand.TLS_FALLBACK_SCSV,
        sslyze.ScanCommand.TLS_EXTENDED_MASTER_SECRET,
        sslyze.ScanCommand.HEARTBLEED,
        sslyze.ScanCommand.ROBOT,
        sslyze.ScanCommand.OPENSSL_CCS_INJECTION,
        sslyze.ScanCommand.CERTIFICATE_INFO,
    }
    request = sslyze.ServerScanRequest(
        server_location=sslyze.ServerNetworkLocation(SNI, port, ip_address="127.0.0.1"),
        scan_commands=commands,
    )
    scanner = sslyze.Scanner()
    scanner.queue_scans([request])
    (result,) = list(scanner.get_results())
    return result


def mozilla_issues(result: Any) -> dict[str, str]:
    """Where the scan departs from Mozilla's "intermediate" server profile."""
    try:
        check_server_against_tls_configuration(
            result, MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
        )
    except ServerNotCompliantWithTlsConfiguration as e:
        return dict(e.issues)
    return {}


def kex(key: Any) -> str:
    """The key exchange of an accepted suite, by the server's ephemeral key."""
    if isinstance(key, EcDhEphemeralKeyInfo):
        return "ECDHE"
    if isinstance(key, DhEphemeralKeyInfo):
        return "DHE"
    return "static (no forward secrecy)"


def summary(result: Any, key: str) -> tuple[str, dict[str, Any]]:
    """A readable verdict, and the facts the test asserts."""
    r = result.scan_result
    lines = [
        f"sslyze {sslyze.__version__.__version__} scan, ingress HTTPS listener, {key} certificate"
    ]
    facts: dict[str, Any] = {"versions": [], "suites": [], "kex": set()}
    for label, field in VERSIONS:
        got = getattr(r, field).result
        names = [a.cipher_suite.openssl_name for a in got.accepted_cipher_suites]
        for a in got.accepted_cipher_suites:
            facts["kex"].add(kex(a.ephemeral_key))
        if names:
            facts["versions"].append(label)
            facts["suites"] += [(label, a.cipher_suite) for a in got.accepted_cipher_suites]
        lines.append(f"  {label:8} {', '.join(names) if names else 'refused'}")
    curves = [c.name for c in r.elliptic_curves.result.supported_curves or []]
    lines.append(f"  key exchange: {' '.join(sorted(facts['kex']))}; curves {', '.join(curves)}")
    facts["curves"] = set(curves)
    reneg = r.session_renegotiation.result
    facts["reneg"] = reneg
    lines.append(
        "  renegotiation: client-initiated "
        + ("ACCEPTED" if reneg.is_vulnerable_to_client_renegotiation_dos else "refused")
        + f" ({reneg.client_renegotiations_success_count} accepted),"
        + f" secure renegotiation extension {'yes' if reneg.supports_secure_renegotiation else 'no'}"
    )
    facts["compression"] = r.tls_compression.result.supports_compression
    lines.append(f"  compression: {'ON' if facts['compression'] else 'off'}")
    vulns = {
        "Heartbleed": r.heartbleed.result.is_vulnerable_to_heartbleed,
        "CCS injection": r.openssl_ccs_injection.result.is_vulnerable_to_ccs_injection,
        "ROBOT": r.robot.result.robot_result.name.startswith("VULNERABLE"),
    }
    facts["vulns"] = vulns
    lines.append(
        "  fallback SCSV: "
        + ("yes" if r.tls_fallback_scsv.result.supports_fallback_scsv else "NO")
        + "; extended master secret: "
        + ("yes" if r.tls_extended_master_secret.result.supports_ems_extension else "NO")
        + "; "
        + ", ".join(f"{k} {'VULNERABLE' if v else 'no'}" for k, v in vulns.items())
        + f" (ROBOT: {r.robot.result.robot_result.name})"
    )
    issues = mozilla_issues(result)
    facts["mozilla"] = issues
    other = {k: v for k, v in issues.items() if k not in ACCEPTED_MOZILLA}
    accepted = [f"{k} ({ACCEPTED_MOZILLA[k]})" for k in sorted(issues) if k in ACCEPTED_MOZILLA]
    verdict = "NOT compliant: " + "; ".join(other.values()) if other else "compliant"
    if accepted and not other:
        verdict += " but for these test-setup departures"
    lines.append(f"  Mozilla intermediate profile: {verdict}")
    if accepted:
        lines.append(f"    {', '.join(accepted)}")
    return "\n".join(lines), facts


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA], ids=str)
async def test_ingress_tls_configuration_passes_sslyze(
    key_type: trustme.KeyType, proxy_factory: Any
) -> None:
    ca = trustme.CA(key_type=key_type)
    leaf = ca.issue_cert(SNI, key_type=key_type)
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    store = CertStore(default=(chain, leaf.private_key_pem.bytes()))
    proxy = await proxy_factory(FakeRoutes(), tls=store.server_context())

    result = await asyncio.to_thread(scan, proxy.port)
    assert result.scan_status == sslyze.ServerScanStatusEnum.COMPLETED, result
    for field in [f for _, f in VERSIONS] + ["session_renegotiation", "tls_compression"]:
        attempt = getattr(result.scan_result, field)
        assert attempt.status == sslyze.ScanCommandAttemptStatusEnum.COMPLETED, (
            field,
            attempt.error_trace,
        )
    text, facts = summary(result, key_type.name)
    print("\n" + text)

    assert facts["versions"] == ["TLS 1.2", "TLS 1.3"], text
    for version, suite in facts["suites"]:
        name = suite.name  # the IANA name: TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        assert not any(w in name for w in WEAK), (version, name)
        if version == "TLS 1.2":
            assert name.startswith("TLS_ECDHE_"), f"no forward secrecy: {name}"
            assert "_GCM_" in name or "CHACHA20_POLY1305" in name, f"not AEAD: {name}"
    assert facts["kex"] == {"ECDHE"}, text  # ECDHE on every accepted suite
    reneg = facts["reneg"]
    assert not reneg.is_vulnerable_to_client_renegotiation_dos, text
    assert reneg.client_renegotiations_success_count == 0, text
    assert facts["compression"] is False, text
    assert not any(facts["vulns"].values()), text
    assert set(facts["mozilla"]) <= set(ACCEPTED_MOZILLA), text
    if "tls_curves" in facts["mozilla"]:
        assert facts["curves"] - {"X25519", "prime256v1", "secp256r1", "secp384r1"} <= (
            STRONG_EXTRA_CURVES
        ), text
