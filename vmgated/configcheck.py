"""Cross-checks of the config that look at many entries at once: address overlaps.

A source address must name one trunk and a destination one VMGateClient, or a call would be
billed to whichever happened to be looked up first.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from vmgated.configparse import Endpoint, IPNetwork


@dataclass(frozen=True, slots=True)
class Claim:
    """One address claimed by a trunk or client, for overlap detection."""

    endpoint: Endpoint
    owner: str
    path: str
    line: int


def find_overlaps(claims: list[Claim]) -> list[tuple[Claim, Claim]]:
    """Pairs (later, earlier) of claims by different owners that some (ip, port) matches both.

    CIDRs are nested or disjoint, so after sorting by (family, start, size) a sweep with a stack
    of enclosing networks finds every containment in O(n log n) for the common case of host
    addresses; only claims on the very same network are compared pairwise.
    """
    groups: dict[IPNetwork, list[Claim]] = defaultdict(list)
    for claim in claims:
        groups[claim.endpoint.network].append(claim)
    order = sorted(groups, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    stack: list[IPNetwork] = []
    found: list[tuple[Claim, Claim]] = []
    for net in order:
        while stack and (
            stack[-1].version != net.version
            or int(stack[-1].broadcast_address) < int(net.network_address)
        ):
            stack.pop()
        group = groups[net]
        for i, claim in enumerate(group):
            rivals = [*(c for outer in stack for c in groups[outer]), *group[:i]]
            for other in rivals:
                if other.owner != claim.owner and claim.endpoint.overlaps(other.endpoint):
                    a, b = (claim, other) if claim.line >= other.line else (other, claim)
                    found.append((a, b))
                    break
        stack.append(net)
    return found
