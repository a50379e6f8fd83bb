"""A fake Route for the relay tests: round-robin over given targets, recording reports."""

from __future__ import annotations

from netplane.l4.picker import RelayCounts, Target


class Route:
    """A fake Route: round-robin over the given targets, recording what the relay reports."""

    def __init__(
        self, *targets: Target, protocol: str = "TCP", proxy_protocol: bool = False
    ) -> None:
        self.protocol = protocol
        self.targets = list(targets)
        self.proxy_protocol = proxy_protocol
        self.cursor = 0
        self.counts = RelayCounts()
        self.picks: list[tuple[str, frozenset[Target]]] = []
        self.n_opened: list[Target] = []
        self.n_closed: list[Target] = []
        self.n_failed: list[Target] = []

    def pick(self, client_ip: str, exclude: frozenset[Target] = frozenset()) -> Target | None:
        self.picks.append((client_ip, exclude))
        candidates = [t for t in self.targets if t not in exclude]
        if not candidates:
            return None
        target = candidates[self.cursor % len(candidates)]
        self.cursor += 1
        return target

    def usable(self, target: Target) -> bool:
        return target in self.targets

    def opened(self, target: Target) -> None:
        self.n_opened.append(target)

    def closed(self, target: Target) -> None:
        self.n_closed.append(target)

    def failed(self, target: Target) -> None:
        self.n_failed.append(target)
