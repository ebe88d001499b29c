"""Who a call belongs to (SPEC §4): trunk and customer, VMGateClient, network and reseller.

Pure: built once per config, then one `attribute(record)` per finished call, with no I/O.

* The first hop (in capture order) whose *source* matches a trunk address gives the trunk,
  and the trunk its customer.
* The first hop whose *destination* matches a VMGateClient address gives the client; failing
  that, a HEP capture id equal to a client's `capture_id` (the hops' own, then the record's).
* The client's network membership gives the reseller through the join code it enrolled
  with, or `direct`.

Lookups are dictionary hits for the usual host addresses; CIDRs are looked up once per
distinct prefix length (a mask and a dict hit each), never by scanning a list, so a roster
of thousands of networks costs the same per call as a roster of ten.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from sip.call import Addr, CallRecord, Hop
from vmgated.config import Config
from vmgated.configparse import Endpoint

DIRECT = "direct"  # the reseller of a client that enrolled with a Direct join code
_CACHE_MAX = 4096  # canonical forms of IPs that missed the exact dicts, before starting over
_PATHS_MAX = 4096  # hop paths whose attribution is remembered, before starting over


@dataclass(frozen=True, slots=True)
class Attribution:
    """The parties of one call. Ids are None when unknown; `reseller` is `direct` when none."""

    trunk: str | None
    customer: str | None
    client: str | None
    network: str | None
    reseller: str

    @property
    def is_direct(self) -> bool:
        """True when no reseller shares this call (Direct client, or no client known)."""
        return self.reseller == DIRECT


class EndpointIndex:
    """(ip, port) → owner id over a set of non-overlapping `Endpoint`s."""

    __slots__ = ("_any_port", "_canonical", "_cidrs", "_exact")

    def __init__(self, items: Iterable[tuple[Endpoint, str]]) -> None:
        self._exact: dict[tuple[str, int], str] = {}
        self._any_port: dict[str, str] = {}
        # version → [(mask, {network int: [(port | None, owner)]})], longest prefix first
        tables: dict[int, dict[int, dict[int, list[tuple[int | None, str]]]]] = {4: {}, 6: {}}
        for endpoint, owner in items:
            net = endpoint.network
            if endpoint.is_host:
                host = str(net.network_address)
                if endpoint.port is None:
                    self._any_port[host] = owner
                else:
                    self._exact[(host, endpoint.port)] = owner
                continue
            by_len = tables[net.version].setdefault(net.prefixlen, {})
            by_len.setdefault(int(net.network_address), []).append((endpoint.port, owner))
        self._cidrs: dict[int, tuple[tuple[int, dict[int, list[tuple[int | None, str]]]], ...]] = {
            version: tuple(
                (int(_mask(version, plen)), table)
                for plen, table in sorted(by_version.items(), reverse=True)
            )
            for version, by_version in tables.items()
        }
        self._canonical: dict[str, IPv4Address | IPv6Address | None] = {}

    def lookup(self, ip: str, port: int) -> str | None:
        """The owner of (ip, port), or None."""
        owner = self._exact.get((ip, port))
        if owner is not None:
            return owner
        owner = self._any_port.get(ip)
        if owner is not None:
            return owner
        if ip in self._canonical:
            addr = self._canonical[ip]
        else:
            addr = _canonical(ip)
            if len(self._canonical) >= _CACHE_MAX:
                self._canonical.clear()
            self._canonical[ip] = addr
        if addr is None:
            return None
        text = str(addr)
        if text != ip:
            # '::FFFF:10.0.0.1', '2001:DB8::0001' and friends: retry with the canonical form.
            owner = self._exact.get((text, port)) or self._any_port.get(text)
            if owner is not None:
                return owner
        value = int(addr)
        for mask, table in self._cidrs[addr.version]:
            entries = table.get(value & mask)
            if entries is not None:
                for want, owner in entries:
                    if want is None or want == port:
                        return owner
        return None


def _mask(version: int, prefixlen: int) -> int:
    bits = 32 if version == 4 else 128
    return ((1 << bits) - 1) ^ ((1 << (bits - prefixlen)) - 1)


def _canonical(ip: str) -> IPv4Address | IPv6Address | None:
    try:
        addr = ip_address(ip.strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class Attributor:
    """Attributes calls for one config; build a new one with each config (it is immutable)."""

    __slots__ = ("_by_ids", "_captures", "_client_parties", "_clients", "_paths",
                 "_trunk_customer", "_trunks")  # fmt: skip

    def __init__(self, config: Config) -> None:
        self._trunks = EndpointIndex((ep, t.id) for t in config.trunks for ep in t.addresses)
        self._clients = EndpointIndex(
            (ep, c.id) for c in config.vmgateclients for ep in c.addresses
        )
        self._captures = {
            c.capture_id: c.id for c in config.vmgateclients if c.capture_id is not None
        }
        self._trunk_customer = {t.id: t.customer for t in config.trunks}
        self._client_parties = {
            c.id: (c.network, c.reseller or DIRECT) for c in config.vmgateclients
        }
        self._by_ids: dict[tuple[str | None, str | None], Attribution] = {}
        self._paths: dict[tuple[int, int], tuple[object, object, Attribution]] = {}

    def attribute(self, record: CallRecord) -> Attribution:
        """The parties of a call from its hops and capture ids (SPEC §4)."""
        return self.attribute_path(record.hops, record.capture_ids)

    def attribute_path(self, hops: Sequence[Hop], capture_ids: Sequence[int]) -> Attribution:
        """The parties of any call with these hops and capture ids (nothing else counts).

        Remembered per pair of objects: the tracker shares one hops tuple and one capture-ids
        tuple among all calls of a path, so billing, the active-call gauge and the listings
        look each path up once. Keyed by identity, with the objects held so that their ids
        cannot be reused while remembered; unshared tuples (CDR lines) only cost a miss.
        """
        key = (id(hops), id(capture_ids))
        hit = self._paths.get(key)
        if hit is not None and hit[0] is hops and hit[1] is capture_ids:
            return hit[2]
        found = self.named(trunk=self.trunk_of(hops), client=self.client_of(hops, capture_ids))
        if len(self._paths) >= _PATHS_MAX:
            self._paths.clear()
        self._paths[key] = (hops, capture_ids, found)
        return found

    def trunk_of(self, hops: Sequence[Hop]) -> str | None:
        """The trunk of the first hop whose source is a trunk address."""
        lookup = self._trunks.lookup
        for hop in hops:
            found = lookup(hop.src[0], hop.src[1])
            if found is not None:
                return found
        return None

    def client_of(self, hops: Sequence[Hop], capture_ids: Sequence[int] = ()) -> str | None:
        """The client of the first hop whose destination is a client address, else by capture
        id (the hops' own, then the call's)."""
        lookup = self._clients.lookup
        for hop in hops:
            found = lookup(hop.dst[0], hop.dst[1])
            if found is not None:
                return found
        if self._captures:
            for capture_id in _capture_ids(hops, capture_ids):
                found = self._captures.get(capture_id)
                if found is not None:
                    return found
        return None

    def trunk_at(self, addr: Addr) -> str | None:
        """The trunk whose addresses include this source (for CDR lines with `src`)."""
        return self._trunks.lookup(addr[0], addr[1])

    def client_at(self, addr: Addr) -> str | None:
        """The client whose addresses include this destination (for CDR lines with `dst`)."""
        return self._clients.lookup(addr[0], addr[1])

    def named(self, *, trunk: str | None, client: str | None) -> Attribution:
        """The attribution of a call whose trunk and client ids are known (or None).

        Unknown ids are kept as given (the rater marks those legs unknown_trunk /
        unknown_client) with no customer, network or reseller.
        """
        key = (trunk, client)
        found = self._by_ids.get(key)
        if found is not None:
            return found
        customer = self._trunk_customer.get(trunk) if trunk is not None else None
        parties = self._client_parties.get(client) if client is not None else None
        network, reseller = parties if parties is not None else (None, DIRECT)
        found = Attribution(trunk, customer, client, network, reseller)
        # Only configured ids are memoised: CDR lines may name anything, the cache must not grow.
        if (trunk is None or customer is not None) and (client is None or parties is not None):
            self._by_ids[key] = found
        return found


def _capture_ids(hops: Sequence[Hop], capture_ids: Sequence[int]) -> Iterator[int]:
    for hop in hops:
        if hop.capture_id is not None:
            yield hop.capture_id
    yield from capture_ids
