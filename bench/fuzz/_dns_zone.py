"""A small cluster zone and a responder over it, shared by the DNS targets."""

from __future__ import annotations

import ipaddress

from netplane.dns.cache import AnswerCache
from netplane.dns.responder import Allow, Responder
from netplane.dns.zone import Zone

from netplane.model import parse_object
from netplane.service_table import build_entry


def make_zone() -> Zone:
    z = Zone("cluster.local", reverse_cidrs=(ipaddress.ip_network("10.96.0.0/12"),))
    web = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]},
        }
    )
    e = build_entry(web, [])
    z.update_service(e.key, e)
    headless = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db", "namespace": "demo"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]},
        }
    )
    sl = parse_object(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "db-1",
                "namespace": "demo",
                "labels": {"kubernetes.io/service-name": "db"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432}],
            "endpoints": [
                {"addresses": [f"10.244.0.{i}"], "hostname": f"db-{i}"} for i in range(1, 5)
            ],
        }
    )
    e = build_entry(headless, [sl])
    z.update_service(e.key, e)
    ext = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ext", "namespace": "demo"},
            "spec": {"type": "ExternalName", "externalName": "example.com"},
        }
    )
    e = build_entry(ext, [])
    z.update_service(e.key, e)
    z.ready = True
    return z


def make_responder() -> Responder:
    return Responder(
        make_zone(),
        allow=Allow([ipaddress.ip_network("127.0.0.0/8")]),
        answers=AnswerCache(max_entries=1000),  # bounded: the fuzzer asks millions of names
    )
