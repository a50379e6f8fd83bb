"""netplane: service networking and ingress data plane for Kubernetes-style clusters.

The embedding API is :class:`Dataplane` with :class:`Config`; see
``examples/embed.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from netplane.config import Config
    from netplane.dataplane import Change, Dataplane

__all__ = ["Change", "Config", "Dataplane", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import netplane` stays cheap for the
    # CLI's `version` and for tools that only need the model.
    if name in ("Dataplane", "Change"):
        from netplane import dataplane

        return getattr(dataplane, name)
    if name == "Config":
        from netplane.config import Config

        return Config
    raise AttributeError(f"module 'netplane' has no attribute {name!r}")
