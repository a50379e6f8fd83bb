"""One exception hierarchy for netplane.

Every error a user can see names the object and the field it is about, e.g.
``Service default/web: spec.ports[1].port: 70000 out of range``, so a log
line or a ``netplane check`` line is enough to find and fix the input.
"""

from __future__ import annotations


class NetplaneError(Exception):
    """Base of every error netplane raises on purpose."""


class ConfigError(NetplaneError):
    """A setting (flag or config file) is wrong; the message names it."""


class ModelError(NetplaneError):
    """An object failed validation.

    ``ref`` is ``"Kind namespace/name"`` (or just the kind when the name is
    unknown), ``field`` the dotted path such as ``spec.ports[1].port``.
    """

    def __init__(self, ref: str, field: str, reason: str) -> None:
        self.ref = ref
        self.field = field
        self.reason = reason
        super().__init__(self.describe())

    def describe(self) -> str:
        parts = [p for p in (self.ref, self.field, self.reason) if p]
        return ": ".join(parts)


class SourceError(NetplaneError):
    """A source (API server, manifest files) failed in a way worth logging."""


class ProtocolError(NetplaneError):
    """A wire protocol was broken; use one of the two subclasses.

    ``hint`` is what to answer with: an HTTP status for ingress, a DNS rcode
    for DNS.
    """

    def __init__(self, msg: str, hint: int = 400) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError")
        super().__init__(msg)
        self.hint = hint


class LocalProtocolError(ProtocolError):
    """We were about to break the protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol."""
