"""The tenant's configuration (SPEC §7): one YAML file and its rate decks, as frozen records.

`load_config(path)` reads everything or refuses with every problem at once (`ConfigError`,
each `Problem` is `file:line: path.to.field: what is wrong and what would be right`). A loaded
`Config` is immutable: a reload builds a new one beside the running one and swaps a reference,
so a bad file never disturbs calls being billed.

Multi-currency billing is not supported yet: every plan must be in the tenant's currency
(a plan without `currency` takes the tenant's).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import ip_address
from pathlib import Path

from rating.model import RatePlan, Scope
from rating.rater import ClientTariff, Rater, TrunkTariff
from vmgated.configparse import (
    ConfigError,
    Endpoint,
    IPNetwork,
    Problem,
    parse_yaml,
    unreadable,
)

__all__ = [
    "Calls",
    "Config",
    "ConfigError",
    "Customer",
    "Endpoint",
    "JoinCode",
    "LedgerTuning",
    "Listen",
    "ListenSpec",
    "MetricsOptions",
    "Network",
    "PlanConfig",
    "Problem",
    "Reseller",
    "Security",
    "Subscription",
    "SubscriptionLimits",
    "Tenant",
    "Trunk",
    "VMGateClient",
    "load_config",
]

DEFAULT_PATH = "/etc/vmgated/vmgated.yaml"
BILLING_TYPES = ("prepaid", "postpaid")
SEAT_PACK_SIZES = (10, 50)  # the subscription sells +10 and +50 VMGateClient seat packs


@dataclass(frozen=True, slots=True)
class Tenant:
    """The operator running vmgated, and the one currency it bills in."""

    name: str
    currency: str


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One socket to open: a fixed `address`, or every address of `interface` (followed live)."""

    address: str | None
    interface: str | None
    port: int

    def __str__(self) -> str:
        host = self.address if self.address is not None else f"%{self.interface}"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the daemon listens: HEP and CDR inputs, the metrics endpoint, the control socket."""

    hep: tuple[ListenSpec, ...]
    cdr: tuple[ListenSpec, ...]
    metrics: ListenSpec
    control: Path


@dataclass(frozen=True, slots=True)
class Security:
    """Who may send us datagrams. An empty `hep_auth_key` means HEP is not authenticated."""

    hep_auth_key: bytes | None
    allowed_sources: tuple[IPNetwork, ...]

    def allows(self, ip: str) -> bool:
        """True when a datagram from `ip` may be read (before any parsing)."""
        try:
            addr = ip_address(ip)
        except ValueError:
            return False
        return any(addr.version == n.version and addr in n for n in self.allowed_sources)


@dataclass(frozen=True, slots=True)
class Calls:
    """Call handling limits."""

    max_duration_us: int  # an answered call without BYE is closed after this long


@dataclass(frozen=True, slots=True)
class SubscriptionLimits:
    """What the tenant's VMGate plan allows before seat packs."""

    vmgateclients: int
    concurrent_ports: int
    networks: int


@dataclass(frozen=True, slots=True)
class Subscription:
    """The tenant's VMGate plan. Seat packs raise the client limit, never ports or networks."""

    plan: str
    limits: SubscriptionLimits
    seat_packs: tuple[int, ...]

    @property
    def client_limit(self) -> int:
        """VMGateClients allowed: the plan's limit plus every seat pack."""
        return self.limits.vmgateclients + sum(self.seat_packs)


@dataclass(frozen=True, slots=True)
class Network:
    """A network of the tenant that VMGateClients join."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Reseller:
    """A middleman who brought VMGateClients and is paid on their traffic."""

    id: str
    name: str
    company: str | None
    email: str | None
    billing_type: str
    status: str  # active | inactive
    rate_plan: str | None


@dataclass(frozen=True, slots=True)
class JoinCode:
    """An enrollment code for a network; `reseller` None means Direct (tenant-managed)."""

    code: str
    network: str
    reseller: str | None


@dataclass(frozen=True, slots=True)
class Trunk:
    """A Customer's SIP ingress: calls whose source matches `addresses` are this trunk's."""

    id: str
    customer: str
    addresses: tuple[Endpoint, ...]
    rate_plan: str | None
    tech_prefix: str


@dataclass(frozen=True, slots=True)
class Customer:
    """A carrier that sends us traffic and is charged for it."""

    id: str
    name: str
    billing_type: str
    trunks: tuple[Trunk, ...]


@dataclass(frozen=True, slots=True)
class VMGateClient:
    """A gateway that terminates calls and is paid for them; `reseller` None means Direct."""

    id: str
    name: str
    network: str
    join_code: str | None
    reseller: str | None  # derived from the join code it enrolled with
    addresses: tuple[Endpoint, ...]
    capture_id: int | None
    rate_plan: str | None


@dataclass(frozen=True, slots=True)
class PlanConfig:
    """How a rate plan is declared: from a deck file or from inline destinations."""

    name: str
    scope: Scope
    currency: str
    deck: Path | None  # None: destinations are inline in the YAML


@dataclass(frozen=True, slots=True)
class MetricsOptions:
    """`metrics:` — per-account series can be switched off for very large rosters."""

    per_account: bool = True


@dataclass(frozen=True, slots=True)
class LedgerTuning:
    """`ledger:` — the writer's group commit: at most `batch_max` entries or `batch_ms` wait."""

    batch_max: int = 1000
    batch_ms: int = 5
    queue_max: int = 100_000


@dataclass(frozen=True)
class Config:
    """A whole, validated configuration. Build one with `load_config`."""

    path: Path
    tenant: Tenant
    state_dir: Path
    listen: Listen
    security: Security
    calls: Calls
    subscription: Subscription
    networks: tuple[Network, ...]
    resellers: tuple[Reseller, ...]
    join_codes: tuple[JoinCode, ...]
    customers: tuple[Customer, ...]
    vmgateclients: tuple[VMGateClient, ...]
    rate_plans: tuple[PlanConfig, ...]
    plans: Mapping[str, RatePlan]
    metrics: MetricsOptions
    ledger: LedgerTuning
    source_files: tuple[Path, ...]
    warnings: tuple[Problem, ...] = ()
    _trunks: Mapping[str, Trunk] = field(default_factory=dict, repr=False, compare=False)
    _customers: Mapping[str, Customer] = field(default_factory=dict, repr=False, compare=False)
    _clients: Mapping[str, VMGateClient] = field(default_factory=dict, repr=False, compare=False)
    _networks: Mapping[str, Network] = field(default_factory=dict, repr=False, compare=False)
    _resellers: Mapping[str, Reseller] = field(default_factory=dict, repr=False, compare=False)

    @property
    def trunks(self) -> tuple[Trunk, ...]:
        """Every trunk of every customer, in file order."""
        return tuple(self._trunks.values())

    def trunk(self, trunk_id: str) -> Trunk | None:
        """The trunk with this id, or None."""
        return self._trunks.get(trunk_id)

    def customer(self, customer_id: str) -> Customer | None:
        """The customer with this id, or None."""
        return self._customers.get(customer_id)

    def customer_of(self, trunk_id: str) -> Customer | None:
        """The customer owning a trunk, or None for an unknown trunk."""
        trunk = self._trunks.get(trunk_id)
        return None if trunk is None else self._customers.get(trunk.customer)

    def client(self, client_id: str) -> VMGateClient | None:
        """The VMGateClient with this id, or None."""
        return self._clients.get(client_id)

    def network(self, network_id: str) -> Network | None:
        """The network with this id, or None."""
        return self._networks.get(network_id)

    def network_of(self, client_id: str) -> Network | None:
        """The network a client is a member of, or None for an unknown client."""
        client = self._clients.get(client_id)
        return None if client is None else self._networks.get(client.network)

    def reseller(self, reseller_id: str) -> Reseller | None:
        """The reseller with this id, or None."""
        return self._resellers.get(reseller_id)

    def reseller_of(self, client_id: str) -> Reseller | None:
        """The reseller a client enrolled through; None for Direct or an unknown client."""
        client = self._clients.get(client_id)
        if client is None or client.reseller is None:
            return None
        return self._resellers.get(client.reseller)

    def plan_assignments(self) -> Mapping[str, int]:
        """How many trunks, resellers and clients use each plan (0 for unused plans)."""
        counts = dict.fromkeys(self.plans, 0)
        users: Iterator[str | None] = (
            x.rate_plan
            for group in (self.trunks, self.resellers, self.vmgateclients)
            for x in group
        )
        for name in users:
            if name is not None and name in counts:
                counts[name] += 1
        return counts

    def rater(self) -> Rater:
        """A rater over this config's plans, trunks and clients (build once per config)."""
        trunks = {
            t.id: TrunkTariff(t.id, t.customer, t.rate_plan, t.tech_prefix) for t in self.trunks
        }
        clients: dict[str, ClientTariff] = {}
        for c in self.vmgateclients:
            reseller = self._resellers.get(c.reseller) if c.reseller else None
            clients[c.id] = ClientTariff(
                c.id, c.rate_plan, c.reseller, reseller.rate_plan if reseller else None
            )
        return Rater(self.plans, trunks, clients)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML at `path` and every deck it names.

    `env` defaults to `os.environ`; `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`)
    overrides `state_dir`. Raises ConfigError listing every problem found.
    """
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = f"cannot read the config: {unreadable(exc)}"
        raise ConfigError([Problem(file, 0, "", why)]) from exc
    doc = parse_yaml(text, file)
    # The builder needs these records; importing it here keeps the import graph one-way.
    from vmgated.configbuild import Builder

    return Builder(doc, path.parent, os.environ if env is None else env).build()


def _listen_text(specs: tuple[ListenSpec, ...]) -> str:
    return ", ".join(str(s) for s in specs) or "(none)"


def keep_restart_only(running: Config, new: Config) -> tuple[Config, tuple[str, ...]]:
    """`new` with the running values of what only a restart applies, and what differed.

    The sockets (`listen`), `state_dir` (the ledger, journal and lock held open) and the
    ledger writer's tuning are set up once at start. A reload used to take a changed value
    into the running config without acting on it: `vmgatectl status` then showed a state_dir
    and sockets the daemon was not using. Each difference is one line: `key: running X, the
    file says Y`.
    """
    pairs = (
        ("listen.hep", _listen_text(running.listen.hep), _listen_text(new.listen.hep)),
        ("listen.cdr", _listen_text(running.listen.cdr), _listen_text(new.listen.cdr)),
        ("listen.metrics", str(running.listen.metrics), str(new.listen.metrics)),
        ("listen.control", str(running.listen.control), str(new.listen.control)),
        ("state_dir", str(running.state_dir), str(new.state_dir)),
        ("ledger", _ledger_text(running.ledger), _ledger_text(new.ledger)),
    )
    changed = tuple(f"{key}: running {was}, the file says {now}"
                    for key, was, now in pairs if was != now)
    if not changed:
        return new, ()
    return replace(new, listen=running.listen, state_dir=running.state_dir,
                   ledger=running.ledger), changed


def _ledger_text(t: LedgerTuning) -> str:
    return f"batch_max {t.batch_max}, batch_ms {t.batch_ms}, queue_max {t.queue_max}"
