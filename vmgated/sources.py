"""Which received datagrams are read at all: the source allow-list and the size limit.

Shared by the in-process UDP listeners (`vmgated.listeners`) and the ingest process
(`vmgated.ingest`), so both drop the same datagrams for the same reasons. No I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, NamedTuple

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_UDP_PAYLOAD = 65507  # largest UDP payload over IPv4
_DECISION_CACHE = 4096  # distinct sources remembered by the allow-list; cleared when full


class Filtered(NamedTuple):
    """What `SourceFilter.filter` kept, and how many it dropped for each reason."""

    kept: list[tuple[bytes, Any]]
    source: int  # from outside the allow-list
    oversized: int  # longer than the size limit
    dropped_from: str | None  # the host of one dropped datagram, for the log line


class SourceFilter:
    """The allow-list and size limit of one socket, with a cache of per-host verdicts.

    `allowed`: None accepts every source; a sequence (even empty) accepts only sources inside
    one of its networks (IPv4-mapped IPv6 sources are matched as IPv4). `v6`: the socket is
    IPv6, whose addresses (host, port, flowinfo, scope_id) are cut to (host, port).
    """

    def __init__(
        self,
        allowed: Sequence[IPNetwork] | None,
        max_datagram: int = MAX_UDP_PAYLOAD,
        v6: bool = False,
    ) -> None:
        self.allowed = None if allowed is None else tuple(allowed)
        self.max_datagram = max_datagram
        self.v6 = v6
        self._decisions: dict[str, bool] = {}

    def set_allowed(self, allowed: Sequence[IPNetwork] | None) -> None:
        """Replace the allow-list (a reload), forgetting the old one's verdicts."""
        self.allowed = None if allowed is None else tuple(allowed)
        self._decisions.clear()

    @property
    def passes_all(self) -> bool:
        """True when `filter` would return every batch as it is (skip the call)."""
        return self.allowed is None and not self.v6 and self.max_datagram >= MAX_UDP_PAYLOAD

    def allowed_source(self, host: str) -> bool:
        """Whether datagrams from `host` are read (cached per host)."""
        decisions = self._decisions
        verdict = decisions.get(host)
        if verdict is not None:
            return verdict
        if len(decisions) >= _DECISION_CACHE:
            decisions.clear()  # bounded under a spoofed-source flood
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            decisions[host] = False
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None:
            ip = mapped
        verdict = any(ip in net for net in self.allowed or ())
        decisions[host] = verdict
        return verdict

    def filter(self, batch: list[tuple[bytes, Any]]) -> Filtered:
        """The datagrams of `batch` that may be read, and the drop counts."""
        decisions = self._decisions
        allowed = self.allowed
        limit = self.max_datagram
        v6 = self.v6
        kept: list[tuple[bytes, Any]] = []
        source = oversized = 0
        dropped_from = None
        for item in batch:
            data, addr = item
            if allowed is not None:
                verdict = decisions.get(addr[0])
                if verdict is None:
                    verdict = self.allowed_source(addr[0])
                if not verdict:
                    source += 1
                    dropped_from = addr[0]
                    continue
            if len(data) > limit:
                oversized += 1
                dropped_from = addr[0]
                continue
            kept.append((data, (addr[0], addr[1])) if v6 else item)
        return Filtered(kept, source, oversized, dropped_from)
