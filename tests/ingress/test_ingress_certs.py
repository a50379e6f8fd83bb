"""CertStore: the certificate each TLS handshake presents, chosen by SNI."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest
import trustme
from cryptography import x509
from ingress_world import World, ingress, path, secret
from netplane.ingress.certs import GENERATED_NAME, CertificateError, CertStore, load_certificate

from netplane.dataplane import Change
from netplane.model import ObjectKey

CA = trustme.CA()
A = CA.issue_cert("a.example")
WILD = CA.issue_cert("*.w.example")
B = CA.issue_cert("b.example")
DEFAULT = CA.issue_cert("default.example")


def pems(cert: trustme.LeafCert) -> tuple[bytes, bytes]:
    chain = b"".join(b.bytes() for b in cert.cert_chain_pems)
    return chain, cert.private_key_pem.bytes()


def tls_secret(name: str, cert: trustme.LeafCert) -> dict:
    return secret(name, *pems(cert))


def presented(
    store: CertStore,
    name: str | None,
    *,
    verify: bool = True,
    max_version: ssl.TLSVersion | None = None,
) -> tuple[list[str], str | None, str | None]:
    """Handshake in memory; the DNS names of the server's certificate, the ALPN and version."""
    client_ctx = ssl.create_default_context()
    # The chain is verified; the name is not, since the default certificate
    # is presented for names it does not cover.
    client_ctx.check_hostname = False
    if verify:
        CA.configure_trust(client_ctx)
    else:
        client_ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        client_ctx.maximum_version = max_version
    client_ctx.set_alpn_protocols(["http/1.1"])
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = store.server_context().wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(20):
        for i, (obj, out, peer_in) in enumerate(((client, c_out, s_in), (server, s_out, c_in))):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                peer_in.write(data)
        if all(done):
            break
    assert all(done), "handshake did not finish"
    der = client.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    return names, client.selected_alpn_protocol(), client.version()


def world(*raws: dict, **store_kw: object) -> tuple[World, CertStore]:
    w = World(*raws)
    store = CertStore(default=pems(DEFAULT), **store_kw)  # type: ignore[arg-type]
    store.rebuild(w.state)
    return w, store


def tls_ingress(name: str, hosts: list[str], secret_name: str, **kw: object) -> dict:
    return ingress(
        name,
        [(hosts[0].replace("*", "x"), [path("/", "web")])],
        tls=[{"hosts": hosts, "secretName": secret_name}],
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("sni", "want"),
    [
        ("a.example", "a.example"),  # exact
        ("A.Example", "a.example"),  # case-insensitive
        ("x.w.example", "*.w.example"),  # wildcard, one label
        ("a.x.w.example", "default.example"),  # two labels: the default
        ("w.example", "default.example"),
        ("other.example", "default.example"),
        (None, "default.example"),  # no SNI at all
    ],
)
def test_sni_picks_exact_then_wildcard_then_default(sni: str | None, want: str) -> None:
    _, store = world(
        tls_secret("a", A),
        tls_secret("wild", WILD),
        tls_ingress("a", ["a.example"], "a"),
        tls_ingress("w", ["*.w.example"], "wild"),
    )
    names, alpn, version = presented(store, sni)
    assert names == [want]
    assert alpn == "http/1.1"
    assert version in ("TLSv1.2", "TLSv1.3")


def test_exact_name_beats_a_wildcard_certificate() -> None:
    exact = CA.issue_cert("x.w.example")
    _, store = world(
        tls_secret("wild", WILD),
        tls_secret("exact", exact),
        tls_ingress("w", ["*.w.example"], "wild"),
        tls_ingress("x", ["x.w.example"], "exact"),
    )
    assert presented(store, "x.w.example")[0] == ["x.w.example"]
    assert presented(store, "y.w.example")[0] == ["*.w.example"]


def test_tls_1_2_and_1_3_only() -> None:
    _, store = world(tls_secret("a", A), tls_ingress("a", ["a.example"], "a"))
    ctx = store.server_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    names, alpn, version = presented(store, "a.example", max_version=ssl.TLSVersion.TLSv1_2)
    assert (names, alpn, version) == (["a.example"], "http/1.1", "TLSv1.2")
    assert presented(store, "a.example")[2] == "TLSv1.3"


def test_generated_default_when_none_is_given() -> None:
    store = CertStore()
    names, _, _ = presented(store, "anything.example", verify=False)
    assert names == ["ingress.local"]
    assert store.debug_state()["default"]["subject"] == f"CN={GENERATED_NAME}"
    assert store.debug_state()["default"]["source"] == "generated"


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        (b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", None, "tls.crt"),
        (None, b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n", "tls.key"),
        (None, B.private_key_pem.bytes(), "does not match"),
    ],
)
def test_bad_secret_is_rejected_naming_it_and_hosts_fall_back(
    caplog: pytest.LogCaptureFixture, cert: bytes | None, key: bytes | None, message: str
) -> None:
    # At debug: the Dataplane's problems log it at warning (tests/core/test_problems.py).
    caplog.set_level(logging.DEBUG, "netplane.ingress")
    good_cert, good_key = pems(A)
    bad = secret("a", cert or good_cert, key or good_key)
    w, store = world(
        bad,
        tls_secret("b", B),
        tls_ingress("a", ["a.example"], "a"),
        tls_ingress("b", ["b.example"], "b"),
    )
    assert presented(store, "a.example")[0] == ["default.example"]
    assert presented(store, "b.example")[0] == ["b.example"]  # the rest still serves
    lines = [r.getMessage() for r in caplog.records if "Secret default/a" in r.getMessage()]
    assert lines
    assert all(message in line and "a.example" in line for line in lines)
    key_text = (key or good_key).decode()
    body = key_text.splitlines()[1]
    for r in caplog.records:
        assert body not in r.getMessage()
        assert "PRIVATE KEY" not in r.getMessage()
    assert "PRIVATE KEY" not in repr(store.debug_state())
    # Fixing the Secret serves it from the next handshake.
    w.apply(tls_secret("a", A))
    store.apply(w.state, _change(w, "Secret", "a"))
    assert presented(store, "a.example")[0] == ["a.example"]


def _change(w: World, kind: str, name: str) -> Change:
    return Change(frozenset({ObjectKey(kind, "default", name)}), frozenset())


def test_missing_secret_falls_back_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "netplane.ingress")
    w, store = world(tls_ingress("a", ["a.example"], "nothere"))
    assert presented(store, "a.example")[0] == ["default.example"]
    store.apply(w.state, _change(w, "Ingress", "unrelated"))
    store.apply(w.state, _change(w, "Ingress", "unrelated"))
    lines = [r.getMessage() for r in caplog.records if "Secret default/nothere" in r.getMessage()]
    assert len(lines) == 1
    assert "Ingress default/a" in lines[0] and "not found" in lines[0]


def test_rotation_serves_the_new_secret_on_the_next_handshake() -> None:
    w, store = world(tls_secret("a", A), tls_ingress("a", ["a.example"], "a"))
    first = presented(store, "a.example")[0]
    renewed = CA.issue_cert("a.example", "www.a.example")
    w.apply(tls_secret("a", renewed))
    store.apply(w.state, _change(w, "Secret", "a"))
    assert first == ["a.example"]
    assert presented(store, "a.example")[0] == ["a.example", "www.a.example"]


def test_only_ingresses_of_our_class_name_certificates() -> None:
    _, store = world(tls_secret("a", A), tls_ingress("a", ["a.example"], "a", cls="nginx"))
    assert presented(store, "a.example")[0] == ["default.example"]


def test_conflicting_tls_host_goes_to_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "netplane.ingress")
    other = CA.issue_cert("a.example", "other.a.example")
    _, store = world(
        tls_secret("a", A),
        tls_secret("other", other),
        tls_ingress("young", ["a.example"], "other", created="2024-06-01T00:00:00Z"),
        tls_ingress("old", ["a.example"], "a", created="2024-01-01T00:00:00Z"),
    )
    assert presented(store, "a.example")[0] == ["a.example"]
    assert any("Ingress default/young" in r.getMessage() for r in caplog.records)


def test_default_certificate_from_a_secret() -> None:
    w, store = world(tls_secret("dflt", B), default_secret=("default", "dflt"))
    assert presented(store, "zzz.example")[0] == ["b.example"]
    assert store.debug_state()["default"]["source"] == "Secret default/dflt"
    w.delete("Secret", "dflt")
    store.apply(w.state, _change(w, "Secret", "dflt"))
    assert presented(store, "zzz.example")[0] == ["default.example"]


def test_bad_configured_default_is_an_error_without_the_key() -> None:
    cert, _ = pems(A)
    key = B.private_key_pem.bytes()
    with pytest.raises(CertificateError) as e:
        CertStore(default=(cert, key))
    assert "default certificate" in str(e.value)
    assert "does not match" in str(e.value)
    assert key.decode().splitlines()[1] not in str(e.value)


def test_load_certificate_reports_names() -> None:
    c = load_certificate(*pems(A))
    assert c.names == ("a.example",)


async def test_real_tls_listener_on_loopback() -> None:
    """asyncio's TLS server with the store's context, and a client verifying by the CA."""
    w, store = world(tls_secret("a", A), tls_ingress("a", ["a.example"], "a"))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=store.server_context())
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context()
    CA.configure_trust(client_ctx)
    try:
        for _ in range(2):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_ctx, server_hostname="a.example"
                ),
                5,
            )
            assert await asyncio.wait_for(reader.read(), 5) == b"hello"
            sslobj = writer.get_extra_info("ssl_object")
            assert sslobj.getpeercert()["subjectAltName"][0][1] in ("a.example", "www.a.example")
            writer.close()
            # Rotate between the two connections.
            w.apply(tls_secret("a", CA.issue_cert("www.a.example", "a.example")))
            store.apply(w.state, _change(w, "Secret", "a"))
        assert sslobj.getpeercert()["subjectAltName"][0][1] == "www.a.example"
    finally:
        server.close()
        await server.wait_closed()
