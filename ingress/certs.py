"""CertStore: server certificates by SNI from the kubernetes.io/tls Secrets that Ingresses name.

Strategy: one :class:`ssl.SSLContext` per Secret version, built when the
Secret or an Ingress naming it changes, never during a handshake. The
listener's context carries an SNI callback that looks the name up (exact,
then a ``*.`` wildcard one label up, else the default) and switches the
connection to that context, so a new Secret version serves from the next
handshake and open connections keep theirs.

A Secret is checked before use: the chain and the key must parse and the
key must belong to the first certificate. A bad or missing Secret leaves its
hosts with the default certificate; it is listed in ``debug_state()`` and
logged at debug level here, since the Dataplane reports it once among its
problems (:mod:`netplane.ingress.problems` finds it the same way).
Private keys never reach a message: errors from the key parser are replaced
by fixed text, and keys go to OpenSSL through a memfd (no file on disk).

Which Ingresses count is decided by the same IngressClass rules as routing
(``classes.py``); a host named by several Ingresses' ``spec.tls`` gets the
oldest one's Secret, as with conflicting paths.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from netplane.dataplane import Change
from netplane.model import Ingress, ObjectKey, Secret
from netplane.state import ClusterState

from .classes import ClassSelector, selected_ingresses
from .paths import wildcard_parent

log = logging.getLogger("netplane.ingress.certs")

ALPN = ["h2", "http/1.1"]
GENERATED_NAME = "netplane default certificate"
_ROUTING_KINDS = frozenset({"Ingress", "IngressClass"})


class CertificateError(ValueError):
    """A certificate and key pair that cannot serve; the message never contains the key."""


@dataclass(frozen=True, slots=True)
class Certificate:
    """A usable certificate: its context and what /debug/state shows about it."""

    context: ssl.SSLContext
    subject: str
    names: tuple[str, ...]
    not_after: str


# TLS 1.2 suites: ECDHE key exchange (forward secrecy) with an AEAD cipher only,
# which leaves out static RSA key exchange, DHE (no parameters are loaded),
# CBC (SHA-1 or SHA-2 MACs), RC4, 3DES, NULL, EXPORT and anonymous suites. This
# is Mozilla's "intermediate" list less its DHE entries. TLS 1.3's suites are
# OpenSSL's defaults, all AEAD with (EC)DHE. SECLEVEL=2 keeps Python's default
# floor (no RSA key under 2048 bits, no SHA-1 signatures).
TLS12_CIPHERS = "@SECLEVEL=2:ECDHE+AESGCM:ECDHE+CHACHA20"


def new_context() -> ssl.SSLContext:
    """A server context with netplane's TLS settings; every listener's context comes from here.

    TLS 1.2-1.3, ECDHE+AEAD suites only (:data:`TLS12_CIPHERS`), no TLS
    compression, no renegotiation (TLS 1.3 has none; a TLS 1.2 client's
    request is refused), the server's cipher order, ALPN h2 and http/1.1.
    ``tests/ingress/test_tls_scan.py`` checks this with sslyze.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.set_alpn_protocols(ALPN)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    return ctx


def load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """load_cert_chain from memory: memfd where the kernel has it, else a private temp dir."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = [os.memfd_create("netplane-cert"), os.memfd_create("netplane-key")]
        try:
            for fd, data in zip(fds, (cert_pem, key_pem), strict=True):
                os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory() as d:  # mode 0700
        paths = [os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")]
        for p, data in zip(paths, (cert_pem, key_pem), strict=True):
            with open(os.open(p, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(data)
        ctx.load_cert_chain(paths[0], paths[1])


def load_certificate(cert_pem: bytes, key_pem: bytes) -> Certificate:
    """Check a PEM chain and key and build their context; CertificateError says why not."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CertificateError("tls.crt does not parse as PEM certificates") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateError(
            "tls.key is encrypted (a password-protected key is not supported)"
        ) from None
    except Exception:
        # The parser's own message is dropped: nothing derived from the key is printed.
        raise CertificateError("tls.key does not parse as a PEM private key") from None
    leaf = chain[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise CertificateError("tls.key does not match the first certificate in tls.crt")
    ctx = new_context()
    try:
        load_chain(ctx, cert_pem, key_pem)
    except ssl.SSLError as e:
        raise CertificateError(f"OpenSSL refused the certificate ({e.reason})") from None
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return Certificate(
        ctx, leaf.subject.rfc4514_string(), names, leaf.not_valid_after_utc.isoformat()
    )


def self_signed() -> tuple[bytes, bytes]:
    """A fresh ECDSA P-256 certificate and key for when no default certificate is given."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GENERATED_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("ingress.local")]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _age(ing: Ingress) -> tuple[str, str, str]:
    return (ing.meta.creation_timestamp, ing.key.namespace, ing.key.name)


class CertStore:
    """Server certificates by SNI from kubernetes.io/tls Secrets named in Ingress spec.tls."""

    def __init__(
        self,
        *,
        default: tuple[bytes, bytes] | None = None,
        ingress_class: str = "netplane",
        controller: str = "netplane.io/ingress",
        default_secret: tuple[str, str] | None = None,
    ) -> None:
        """default: (cert PEM, key PEM); None -> a self-signed one generated now.

        default_secret: (namespace, name) of a kubernetes.io/tls Secret that
        serves as the default certificate while it exists and is valid
        (``--default-certificate``); ``default`` serves otherwise. A bad
        ``default`` raises CertificateError.
        """
        self.ingress_class = ingress_class
        self.controller = controller
        self.default_secret = default_secret
        self._generated = default is None
        pair = default or self_signed()
        try:
            self._fallback = load_certificate(*pair)
        except CertificateError as e:
            raise CertificateError(f"default certificate: {e}") from None
        self._default = self._fallback
        self._default_source = "generated" if self._generated else "configured"
        # Per Secret: the version parsed, and its certificate or the reason it was refused.
        self._secrets: dict[ObjectKey, tuple[Secret, Certificate | str]] = {}
        self._exact: dict[str, Certificate] = {}
        self._wild: dict[str, Certificate] = {}
        # host -> (Secret key, Ingress key) for every spec.tls host, usable or not.
        self._hosts: dict[str, tuple[ObjectKey, ObjectKey]] = {}
        self._problems: set[str] = set()
        # Secrets named by our Ingresses (or as the default): changes to others are ignored.
        self._wanted: frozenset[ObjectKey] = frozenset()
        # The listener's own context holds the fallback too; the SNI callback
        # replaces it per handshake (it runs also when the client sends no name).
        self._server = new_context()
        load_chain(self._server, *pair)
        self._server.sni_callback = self._sni

    # -- TLS -----------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        """The context a TLS listener is created with; SNI picks the certificate per handshake."""
        return self._server

    def _sni(self, conn: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: object) -> None:
        conn.context = self.lookup(name).context

    def lookup(self, name: str | None) -> Certificate:
        """The certificate for an SNI name: exact, then wildcard, else the default."""
        if name:
            name = name.lower().rstrip(".")
            cert = self._exact.get(name)
            if cert is not None:
                return cert
            parent = wildcard_parent(name)
            if parent is not None:
                cert = self._wild.get(parent)
                if cert is not None:
                    return cert
        return self._default

    # -- building --------------------------------------------------------------

    def rebuild(self, state: ClusterState) -> None:
        """Recompute the SNI table from every Ingress of ours and the Secrets they name."""
        selector = ClassSelector.from_state(
            state, ingress_class=self.ingress_class, controller=self.controller
        )
        problems: list[str] = []
        # Bad or missing Secrets: the Dataplane's problems say these (at warning).
        reported: list[str] = []
        hosts: dict[str, tuple[ObjectKey, ObjectKey]] = {}
        for ing in sorted(selected_ingresses(state, selector), key=_age):
            for tls in ing.tls:
                if not tls.secret_name:
                    continue
                skey = ObjectKey("Secret", ing.key.namespace, tls.secret_name)
                for host in tls.hosts:
                    have = hosts.get(host)
                    if have is None:
                        hosts[host] = (skey, ing.key)
                    elif have[0] != skey:
                        problems.append(
                            f"{ing.key}: spec.tls host {host} names {skey}, but {have[1]}"
                            f" (older) names {have[0]}; serving {have[0]}"
                        )
        wanted = {skey for skey, _ in hosts.values()}
        if self.default_secret is not None:
            wanted.add(ObjectKey("Secret", *self.default_secret))
        certs: dict[ObjectKey, Certificate | str] = {}
        for skey in wanted:
            certs[skey] = self._certificate(state, skey)
        self._secrets = {k: v for k, v in self._secrets.items() if k in wanted}
        exact: dict[str, Certificate] = {}
        wild: dict[str, Certificate] = {}
        for host, (skey, ikey) in hosts.items():
            cert = certs[skey]
            if isinstance(cert, str):
                reported.append(
                    f"{ikey}: spec.tls {skey} {cert}; host {host} uses the default certificate"
                )
                continue
            if host.startswith("*."):
                wild[host[2:]] = cert
            else:
                exact[host] = cert
        default = self._fallback
        source = "generated" if self._generated else "configured"
        if self.default_secret is not None:
            skey = ObjectKey("Secret", *self.default_secret)
            cert = certs[skey]
            if isinstance(cert, str):
                reported.append(f"default certificate {skey} {cert}; using the {source} one")
            else:
                default, source = cert, str(skey)
        self._exact, self._wild, self._hosts = exact, wild, hosts
        self._wanted = frozenset(wanted)
        self._default, self._default_source = default, source
        for p in problems:
            if p not in self._problems:
                log.warning("%s", p)
        for p in reported:
            if p not in self._problems:
                log.debug("%s", p)
        self._problems = {*problems, *reported}

    def apply(self, state: ClusterState, change: Change) -> None:
        """Follow a change: Ingresses, IngressClasses and the Secrets in use matter here."""
        for k in change.objects:
            if k.kind in _ROUTING_KINDS or (k.kind == "Secret" and k in self._wanted):
                self.rebuild(state)
                return

    def _certificate(self, state: ClusterState, skey: ObjectKey) -> Certificate | str:
        """The certificate of a Secret, parsed once per version, or why it cannot serve."""
        secret = state.get(skey)
        if not isinstance(secret, Secret):
            self._secrets.pop(skey, None)
            return "is not found (or is not of type kubernetes.io/tls)"
        cached = self._secrets.get(skey)
        if cached is not None and cached[0] == secret:
            return cached[1]
        result: Certificate | str
        try:
            result = load_certificate(secret.cert_pem, secret.key_pem.reveal())
        except CertificateError as e:
            result = f"is rejected: {e}"
        self._secrets[skey] = (secret, result)
        return result

    # -- introspection -----------------------------------------------------------

    def debug_state(self) -> dict:
        """Hosts with their certificate's Secret and subject, the default, and the problems."""
        hosts = {}
        for host, (skey, ikey) in sorted(self._hosts.items()):
            cert = self._exact.get(host) or (
                self._wild.get(host[2:]) if host.startswith("*.") else None
            )
            hosts[host] = {
                "secret": f"{skey.namespace}/{skey.name}",
                "ingress": f"{ikey.namespace}/{ikey.name}",
                "certificate": (
                    {
                        "subject": cert.subject,
                        "dnsNames": list(cert.names),
                        "notAfter": cert.not_after,
                    }
                    if cert is not None
                    else "default (the Secret is missing or rejected)"
                ),
            }
        d = self._default
        return {
            "hosts": hosts,
            "default": {
                "source": self._default_source,
                "subject": d.subject,
                "dnsNames": list(d.names),
                "notAfter": d.not_after,
            },
            "problems": sorted(self._problems),
        }
