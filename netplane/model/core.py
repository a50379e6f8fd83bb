"""Secret (TLS only), Node and Pod: the core/v1 kinds the planes read a little of.

A Secret's private key is held in :class:`Redacted`, whose repr and str never
show the bytes, so a key cannot reach a log line, an error or /debug/state by
accident.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
from dataclasses import dataclass

from netplane.model.meta import Fields, Meta, ObjectKey, parse_meta

SECRET_KIND = "Secret"
NODE_KIND = "Node"
POD_KIND = "Pod"
TLS_SECRET_TYPE = "kubernetes.io/tls"
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"
ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")


class Redacted:
    """Bytes that must never be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Redacted) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Secret:
    """A kubernetes.io/tls Secret: a PEM certificate chain and its key."""

    key: ObjectKey
    meta: Meta
    cert_pem: bytes
    key_pem: Redacted

    kind = SECRET_KIND


@dataclass(frozen=True, slots=True)
class NodeAddress:
    type: str
    address: str


@dataclass(frozen=True, slots=True)
class Node:
    key: ObjectKey
    meta: Meta
    addresses: tuple[NodeAddress, ...]
    zone: str

    kind = NODE_KIND


@dataclass(frozen=True, slots=True)
class Pod:
    key: ObjectKey
    meta: Meta
    pod_ips: tuple[str, ...]
    phase: str
    ready: bool
    node_name: str
    hostname: str
    subdomain: str
    container_ports: tuple[tuple[str, int, str], ...]  # (name, containerPort, protocol)

    kind = POD_KIND

    @property
    def terminating(self) -> bool:
        return bool(self.meta.deletion_timestamp)


def _secret_bytes(f: Fields, data: Fields, string_data: Fields, name: str) -> bytes:
    if string_data.has(name):
        return string_data.str(name).encode()
    value = data.str(name)
    if not value:
        f.fail(f"data[{name}]", "required for a kubernetes.io/tls Secret")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    # Raised outside the except block so the decoder's exception is not
    # chained on: neither message may echo the value, which is key material.
    f.fail(f"data[{name}]", "not valid base64")


def parse_secret(f: Fields) -> Secret | None:
    """A TLS Secret, or None for any other type (netplane ignores those)."""
    meta = parse_meta(f, SECRET_KIND)
    if f.str("type", "Opaque") != TLS_SECRET_TYPE:
        return None
    if LAST_APPLIED_ANNOTATION in meta.annotations:
        # kubectl apply copies the whole manifest, private key included, into
        # this annotation; keeping it would print the key with the Meta.
        annotations = {k: v for k, v in meta.annotations.items() if k != LAST_APPLIED_ANNOTATION}
        meta = dataclasses.replace(meta, annotations=annotations)
    data = f.obj("data")
    string_data = f.obj("stringData")
    cert = _secret_bytes(f, data, string_data, "tls.crt")
    key = _secret_bytes(f, data, string_data, "tls.key")
    if b"-----BEGIN" not in cert:
        f.fail("data[tls.crt]", "not a PEM certificate")
    if b"-----BEGIN" not in key:
        f.fail("data[tls.key]", "not a PEM private key")
    return Secret(
        key=ObjectKey(SECRET_KIND, meta.namespace, meta.name),
        meta=meta,
        cert_pem=cert,
        key_pem=Redacted(key),
    )


def parse_node(f: Fields) -> Node:
    meta = parse_meta(f, NODE_KIND)
    addrs = []
    for a in f.obj("status").objs("addresses"):
        addrs.append(NodeAddress(a.str("type", required=True), a.str("address", required=True)))
    zone = next((meta.labels[k] for k in ZONE_LABELS if k in meta.labels), "")
    return Node(
        key=ObjectKey(NODE_KIND, "", meta.name), meta=meta, addresses=tuple(addrs), zone=zone
    )


def parse_pod(f: Fields) -> Pod:
    meta = parse_meta(f, POD_KIND)
    spec = f.obj("spec")
    status = f.obj("status")
    ips = [
        (f"podIPs[{i}]", p.str("ip", required=True)) for i, p in enumerate(status.objs("podIPs"))
    ]
    if not ips and status.str("podIP"):
        ips = [("podIP", status.str("podIP"))]
    pod_ips = []
    for where, ip in ips:
        try:
            pod_ips.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            status.fail(where, f"{ip!r} is not a valid IP address")
    ready = any(
        c.str("type") == "Ready" and c.str("status") == "True" for c in status.objs("conditions")
    )
    ports = []
    for c in spec.objs("containers"):
        for p in c.objs("ports"):
            number = p.int("containerPort", required=True) or 0
            if not 1 <= number <= 65535:
                p.fail("containerPort", f"{number} out of range (1-65535)")
            ports.append((p.str("name"), number, p.str("protocol", "TCP")))
    return Pod(
        key=ObjectKey(POD_KIND, meta.namespace, meta.name),
        meta=meta,
        pod_ips=tuple(pod_ips),
        phase=status.str("phase"),
        ready=ready,
        node_name=spec.str("nodeName"),
        hostname=spec.str("hostname"),
        subdomain=spec.str("subdomain"),
        container_ports=tuple(ports),
    )
