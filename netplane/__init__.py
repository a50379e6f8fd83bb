"""netplane: service networking and ingress data plane for Kubernetes-style clusters."""

__version__ = "0.1.0"
