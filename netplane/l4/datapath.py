"""Which L4 datapath serves a service port: the kernel (nftables) or the asyncio proxy.

Sans-IO: :func:`choose` reads one ServiceTable port and the configured
``--l4-datapath`` and returns the datapath with the reason, which
``/debug/state``, ``/metrics`` and the log show as they are.

- ``userspace``: every port in the asyncio proxy.
- ``nftables``: every port the kernel can serve. Only PROXY protocol (a
  header the kernel cannot write) keeps a port in user space; a
  least-connections port is served with the kernel's random choice, and
  the reason says so.
- ``auto``: the kernel, unless the port needs something only the proxy
  does: PROXY protocol, least-connections, or the annotation
  ``netplane.io/l4-datapath: userspace``, which also asks for the proxy's
  connect retry (a refused or timed-out connect tried again on another
  endpoint; the kernel's DNAT cannot retry).

The annotation ``netplane.io/l4-datapath`` (``userspace`` or ``nftables``)
overrides the mode for one Service, but never puts a port the kernel cannot
serve into the kernel, and never asks for the kernel when the mode is
``userspace`` (the operator's choice wins over the Service author's).
"""

from __future__ import annotations

from netplane.l4.picker import LB_POLICY_ANNOTATION, POLICIES
from netplane.l4.routes import PROXY_PROTOCOL_ANNOTATION
from netplane.service_table import PortEntry, ServiceEntry

DATAPATH_ANNOTATION = "netplane.io/l4-datapath"
MODES = ("userspace", "nftables", "auto")
USERSPACE = "userspace"
KERNEL = "nftables"
#: protocols the kernel's DNAT serves (the asyncio proxy: TCP and UDP only)
KERNEL_PROTOCOLS = ("TCP", "UDP", "SCTP")


def choose(
    entry: ServiceEntry, port: PortEntry, mode: str, *, default_policy: str = "round-robin"
) -> tuple[str, str]:
    """``(datapath, reason)`` for one service port under ``mode`` (see the module docstring)."""
    if mode == USERSPACE:
        return USERSPACE, "--l4-datapath userspace"
    annotations = entry.service.meta.annotations
    if port.protocol not in KERNEL_PROTOCOLS:
        return USERSPACE, f"protocol {port.protocol} is not served by the kernel datapath"
    if port.protocol == "TCP" and annotations.get(PROXY_PROTOCOL_ANNOTATION) == "v2":
        return USERSPACE, "PROXY protocol needs the user-space proxy"
    asked = annotations.get(DATAPATH_ANNOTATION)
    if asked == USERSPACE:
        return USERSPACE, f"annotation {DATAPATH_ANNOTATION}: userspace"
    policy = annotations.get(LB_POLICY_ANNOTATION)
    if policy not in POLICIES:
        policy = default_policy
    least = policy == "least-connections"
    if asked == KERNEL:
        if least:
            return (
                KERNEL,
                f"annotation {DATAPATH_ANNOTATION}: nftables (least-connections as random)",
            )
        return KERNEL, f"annotation {DATAPATH_ANNOTATION}: nftables"
    if mode == "auto":
        if least:
            return USERSPACE, "least-connections needs the user-space proxy"
        return KERNEL, "--l4-datapath auto: no user-space feature needed"
    if least:
        return KERNEL, "--l4-datapath nftables (least-connections served as random)"
    return KERNEL, "--l4-datapath nftables"


def annotation_problem(entry: ServiceEntry) -> str | None:
    """Why the Service's datapath annotation is ignored, or None."""
    value = entry.service.meta.annotations.get(DATAPATH_ANNOTATION)
    if value is None or value in (USERSPACE, KERNEL):
        return None
    return (
        f"annotation {DATAPATH_ANNOTATION}: {value!r} is not one of {USERSPACE}, {KERNEL}; ignored"
    )
