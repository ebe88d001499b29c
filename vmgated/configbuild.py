"""Building a `Config` from a parsed YAML document: every section, reference and limit.

`vmgated.config.load_config` is the entry point; this module walks the document once,
builds the frozen records of `vmgated.config` and collects every `Problem` on the way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from ipaddress import ip_address
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rating.model import RatePlan, Scope
from vmgated.config import (
    BILLING_TYPES,
    SEAT_PACK_SIZES,
    Calls,
    Config,
    Customer,
    JoinCode,
    LedgerTuning,
    Listen,
    ListenSpec,
    MetricsOptions,
    Network,
    PlanConfig,
    Reseller,
    Security,
    Subscription,
    SubscriptionLimits,
    Tenant,
    Trunk,
    VMGateClient,
)
from vmgated.configcheck import Claim, find_overlaps
from vmgated.configparse import (
    ConfigError,
    Document,
    Endpoint,
    IPNetwork,
    Problem,
    Reader,
    child,
    parse_endpoint,
    parse_network,
)
from vmgated.configplans import load_plans

MAX_DURATION_LIMIT_US = 7 * 86_400 * 1_000_000
"""Longest `calls.max_duration` accepted (see rating.deck for why there is a bound)."""

# A limit that failed to read: its own refusal is reported, not every client on top of it.
_UNCHECKED = 1 << 62

_TOP_KEYS = (
    "tenant",
    "state_dir",
    "listen",
    "security",
    "calls",
    "subscription",
    "networks",
    "resellers",
    "join_codes",
    "customers",
    "vmgateclients",
    "rate_plans",
    "metrics",
    "ledger",
)


class Builder:
    """Walks the document once, building records and collecting problems."""

    def __init__(self, doc: Document, base: Path, env: Mapping[str, str]) -> None:
        self.r = Reader(doc)
        self.base = base
        self.env = env
        self.claims: list[Claim] = []
        self.paths: dict[str, str] = {}  # "trunk 'acme-1'" → "customers[0].trunks[0]"

    def build(self) -> Config:
        r = self.r
        top = r.mapping(self.r.doc.data, "", _TOP_KEYS, required=("tenant", "subscription"))
        if top is None:
            raise ConfigError(r.problems)
        tenant = self.tenant(top.get("tenant"))
        state_dir = self.state_dir(top)
        listen = self.listen(top.get("listen"), state_dir)
        security = self.security(top.get("security"))
        m = r.mapping(top.get("calls") or {}, "calls", ("max_duration",)) or {}
        max_duration = r.duration_us(m, "max_duration", "calls", 3 * 3600 * 1_000_000)
        if max_duration > MAX_DURATION_LIMIT_US:
            # With the deck's price bounds this keeps every leg inside 64-bit micro-units.
            r.problem(
                "calls.max_duration",
                f"{m['max_duration']} is longer than 7d; no call is held (or billed) that long",
            )
            max_duration = MAX_DURATION_LIMIT_US
        calls = Calls(max_duration)
        subscription = self.subscription(top.get("subscription"))
        networks = self.networks(top.get("networks"), subscription)
        plan_configs, plans, decks = self.plans(top.get("rate_plans"), tenant.currency)
        resellers = self.resellers(top.get("resellers"), plans)
        join_codes = self.join_codes(top.get("join_codes"), networks, resellers)
        customers = self.customers(top.get("customers"), plans)
        clients = self.clients(top.get("vmgateclients"), networks, join_codes, plans, subscription)
        m = r.mapping(top.get("metrics") or {}, "metrics", ("per_account",)) or {}
        metrics = MetricsOptions(r.boolean(m, "per_account", "metrics", True))
        ledger = self.ledger(top.get("ledger"))
        self.check_overlaps()
        if r.problems:
            raise ConfigError(
                sorted(r.problems, key=lambda p: (p.file != r.doc.file, p.file, p.line))
            )
        trunks = {t.id: t for c in customers.values() for t in c.trunks}
        return Config(
            path=Path(r.doc.file),
            tenant=tenant,
            state_dir=state_dir,
            listen=listen,
            security=security,
            calls=calls,
            subscription=subscription,
            networks=tuple(networks.values()),
            resellers=tuple(resellers.values()),
            join_codes=tuple(join_codes.values()),
            customers=tuple(customers.values()),
            vmgateclients=tuple(clients.values()),
            rate_plans=plan_configs,
            plans=MappingProxyType(plans),
            metrics=metrics,
            ledger=ledger,
            source_files=(Path(r.doc.file), *decks),
            warnings=tuple(self.warnings(customers, resellers, clients)),
            _trunks=MappingProxyType(trunks),
            _customers=MappingProxyType(customers),
            _clients=MappingProxyType(clients),
            _networks=MappingProxyType(networks),
            _resellers=MappingProxyType(resellers),
        )

    # -- sections ---------------------------------------------------------------------------

    def tenant(self, value: Any) -> Tenant:
        r = self.r
        if value is None:  # already reported as required
            return Tenant("", "USD")
        m = r.mapping(value, "tenant", ("name", "currency"), required=("name",)) or {}
        name = r.text(m, "name", "tenant") or ""
        currency = r.text(m, "currency", "tenant", "USD") or "USD"
        if not (len(currency) == 3 and currency.isalpha() and currency.isupper()):
            r.problem("tenant.currency", f"{currency!r} must be an ISO 4217 code such as USD")
            currency = "USD"
        return Tenant(name, currency)

    def state_dir(self, top: Mapping[str, Any]) -> Path:
        from_env = self.env.get("STATE_DIRECTORY")
        if from_env:
            # systemd may pass several directories separated by ':'; ours is the first.
            return Path(from_env.split(":")[0])
        text = self.r.text(top, "state_dir", "", "./var") or "./var"
        return self.resolve(text)

    def resolve(self, text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else Path(os.path.normpath(self.base / p))

    def listen(self, value: Any, state_dir: Path) -> Listen:
        r = self.r
        m = r.mapping(value or {}, "listen", ("hep", "cdr", "metrics", "control")) or {}
        hep_raw = m.get("hep", [{"address": "127.0.0.1", "port": 9060}])
        hep = tuple(self.specs(hep_raw, "listen.hep", 9060))
        cdr = tuple(self.specs(m.get("cdr"), "listen.cdr", 9070))
        metrics = self.spec(m.get("metrics", {}), "listen.metrics", 9108, "127.0.0.1")
        if metrics is not None and metrics.interface is not None:
            # The HTTP endpoint is one TCP server on one address (SPEC §9 names a default
            # address, not an interface); following an interface's addresses is for the
            # UDP inputs, which systemd socket activation and reloads also handle.
            r.problem("listen.metrics.interface",
                      "the metrics endpoint listens on one address; give address: instead")
            metrics = None
        metrics = metrics or ListenSpec("127.0.0.1", None, 9108)
        control_text = r.text(m, "control", "listen")
        control = self.resolve(control_text) if control_text else state_dir / "control.sock"
        return Listen(hep, cdr, metrics, control)

    def specs(self, value: Any, path: str, port: int) -> Iterator[ListenSpec]:
        for i, item in enumerate(self.r.sequence(value, path)):
            spec = self.spec(item, child(path, i), port)
            if spec is not None:
                yield spec

    def spec(
        self, value: Any, path: str, default_port: int, default_address: str | None = None
    ) -> ListenSpec | None:
        r = self.r
        m = r.mapping(value, path, ("address", "interface", "port"))
        if m is None:
            return None
        interface = r.text(m, "interface", path)
        address = r.text(m, "address", path, None if interface else default_address)
        port = r.port(m, "port", path, default_port) or default_port
        if (address is None) == (interface is None):
            r.problem(path, "give exactly one of address or interface")
            return None
        if address is not None:
            try:
                address = str(ip_address(address))
            except ValueError:
                r.problem(
                    child(path, "address"),
                    f"{address!r} is not an IP address; to "
                    "listen on an interface's addresses use interface: NAME",
                )
                return None
        return ListenSpec(address, interface, port)

    def security(self, value: Any) -> Security:
        r = self.r
        m = r.mapping(value or {}, "security", ("hep_auth_key", "allowed_sources")) or {}
        key = r.text(m, "hep_auth_key", "security")
        sources: list[IPNetwork] = []
        if "allowed_sources" not in m:
            sources = [parse_network("127.0.0.0/8"), parse_network("::1")]
        else:
            path = "security.allowed_sources"
            items = r.sequence(m["allowed_sources"], path, default_empty=False)
            if not items and isinstance(m["allowed_sources"], list):
                r.problem(
                    path,
                    "an empty list would drop every datagram; list the SIP "
                    "servers' networks (0.0.0.0/0 and ::/0 accept any source)",
                )
            for i, item in enumerate(items):
                text = r.text({"x": item}, "x", "") if not isinstance(item, str) else item
                try:
                    sources.append(parse_network(str(text)))
                except ValueError as exc:
                    r.problem(child(path, i), str(exc))
        return Security(key.encode() if key else None, tuple(sources))

    def subscription(self, value: Any) -> Subscription:
        r = self.r
        path = "subscription"
        if value is None:  # already reported as required; do not also refuse every client
            return Subscription("", SubscriptionLimits(_UNCHECKED, _UNCHECKED, _UNCHECKED), ())
        m = r.mapping(value, path, ("plan", "limits", "seat_packs"), required=("plan", "limits"))
        m = m or {}
        plan = r.text(m, "plan", path) or ""
        lp = "subscription.limits"
        keys = ("vmgateclients", "concurrent_ports", "networks")
        if m.get("limits") is None:
            limits = SubscriptionLimits(_UNCHECKED, _UNCHECKED, _UNCHECKED)
        else:
            lm = r.mapping(m["limits"], lp, keys, required=keys) or {}
            limits = SubscriptionLimits(
                r.integer(lm, "vmgateclients", lp, _UNCHECKED) or 0,
                r.integer(lm, "concurrent_ports", lp, _UNCHECKED) or 0,
                r.integer(lm, "networks", lp, _UNCHECKED) or 0,
            )
        packs: list[int] = []
        for i, pack in enumerate(r.sequence(m.get("seat_packs"), "subscription.seat_packs")):
            if pack in SEAT_PACK_SIZES and not isinstance(pack, bool):
                packs.append(pack)
            else:
                r.problem(
                    child("subscription.seat_packs", i),
                    f"{pack!r} is not a seat pack; packs add 10 or 50 VMGateClients",
                )
        return Subscription(plan, limits, tuple(packs))

    def networks(self, value: Any, sub: Subscription) -> dict[str, Network]:
        r = self.r
        out: dict[str, Network] = {}
        items = r.sequence(value, "networks")
        for i, item in enumerate(items):
            path = child("networks", i)
            m = r.mapping(item, path, ("id", "name"), required=("id",))
            nid = r.ident(m, "id", path) if m is not None else None
            if m is None or nid is None:
                continue
            if self.duplicate(out, nid, path, "network"):
                continue
            out[nid] = Network(nid, r.text(m, "name", path, nid) or nid)
        if len(items) > sub.limits.networks:
            r.problem(
                child("networks", sub.limits.networks),
                f"{len(items)} networks but the {sub.plan or 'subscription'} plan allows "
                f"{sub.limits.networks}; upgrade the plan or remove a network",
            )
        return out

    def plans(
        self, value: Any, currency: str
    ) -> tuple[tuple[PlanConfig, ...], dict[str, RatePlan], list[Path]]:
        r = self.r
        configs: dict[str, PlanConfig] = {}
        paths: dict[str, str] = {}
        inline: dict[str, Any] = {}
        for i, item in enumerate(r.sequence(value, "rate_plans")):
            path = child("rate_plans", i)
            m = r.mapping(
                item,
                path,
                ("name", "scope", "currency", "deck", "destinations"),
                required=("name", "scope"),
            )
            name = r.ident(m, "name", path) if m is not None else None
            if m is None or name is None:
                continue
            scope_text = r.choice(m, "scope", path, [s.value for s in Scope], "")
            plan_currency = r.text(m, "currency", path, currency) or currency
            if plan_currency != currency:
                r.problem(
                    child(path, "currency"),
                    f"{plan_currency!r} differs from the tenant currency {currency!r}; "
                    "multi-currency billing is not supported yet",
                )
            deck_text = r.text(m, "deck", path)
            has_rows = m.get("destinations") is not None
            if (deck_text is None) == (not has_rows):
                r.problem(path, "give exactly one of deck (a CSV path) or destinations (inline)")
                continue
            if self.duplicate(configs, name, path, "rate plan") or not scope_text:
                continue
            deck = self.resolve(deck_text) if deck_text else None
            configs[name] = PlanConfig(name, Scope(scope_text), plan_currency, deck)
            paths[name] = path
            if has_rows:
                inline[name] = m["destinations"]
        plans = load_plans(configs.values(), paths, inline, self.r, self.display)
        decks = [c.deck for c in configs.values() if c.deck is not None]
        return tuple(configs.values()), plans, decks

    def display(self, p: Path) -> str:
        """A deck path as the operator typed it, relative to the cwd when possible."""
        try:
            return os.path.relpath(p)
        except ValueError:
            return str(p)

    def plan_ref(
        self,
        m: Mapping[str, Any],
        path: str,
        plans: Mapping[str, RatePlan],
        scope: Scope,
        who: str,
    ) -> str | None:
        name = self.r.text(m, "rate_plan", path)
        if name is None:
            return None
        sub = child(path, "rate_plan")
        plan = plans.get(name)
        if plan is None:
            self.r.problem(sub, f"{name!r} is not a rate plan; {_known(plans)}")
        elif plan.scope is not scope:
            self.r.problem(
                sub, f"{name!r} is a {plan.scope.value} plan; {who} needs a {scope.value} plan"
            )
        return name

    def resellers(self, value: Any, plans: Mapping[str, RatePlan]) -> dict[str, Reseller]:
        r = self.r
        out: dict[str, Reseller] = {}
        keys = ("id", "name", "company", "email", "billing_type", "status", "rate_plan")
        for i, item in enumerate(r.sequence(value, "resellers")):
            path = child("resellers", i)
            m = r.mapping(item, path, keys, required=("id", "name"))
            rid = r.ident(m, "id", path) if m is not None else None
            if m is None or rid is None or self.duplicate(out, rid, path, "reseller"):
                continue
            self.paths[f"reseller {rid!r}"] = path
            email = r.text(m, "email", path)
            if email is not None and "@" not in email:
                r.problem(child(path, "email"), f"{email!r} is not an email address")
            out[rid] = Reseller(
                id=rid,
                name=r.text(m, "name", path) or rid,
                company=r.text(m, "company", path),
                email=email,
                billing_type=r.choice(m, "billing_type", path, BILLING_TYPES, "postpaid"),
                status=r.choice(m, "status", path, ("active", "inactive"), "active"),
                rate_plan=self.plan_ref(m, path, plans, Scope.RESELLER, "a reseller"),
            )
        return out

    def join_codes(
        self, value: Any, networks: Mapping[str, Network], resellers: Mapping[str, Reseller]
    ) -> dict[str, JoinCode]:
        r = self.r
        out: dict[str, JoinCode] = {}
        for i, item in enumerate(r.sequence(value, "join_codes")):
            path = child("join_codes", i)
            m = r.mapping(item, path, ("code", "network", "reseller"), required=("code", "network"))
            code = r.ident(m, "code", path) if m is not None else None
            if m is None or code is None or self.duplicate(out, code, path, "join code"):
                continue
            network = r.text(m, "network", path) or ""
            if network and network not in networks:
                r.problem(
                    child(path, "network"), f"{network!r} is not a network; {_known(networks)}"
                )
            reseller = r.text(m, "reseller", path)
            if reseller is not None and reseller not in resellers:
                r.problem(
                    child(path, "reseller"),
                    f"{reseller!r} is not a reseller; "
                    f"{_known(resellers)} (leave it out for Direct)",
                )
            out[code] = JoinCode(code, network, reseller)
        return out

    def customers(self, value: Any, plans: Mapping[str, RatePlan]) -> dict[str, Customer]:
        r = self.r
        out: dict[str, Customer] = {}
        trunk_ids: dict[str, str] = {}
        for i, item in enumerate(r.sequence(value, "customers")):
            path = child("customers", i)
            m = r.mapping(
                item,
                path,
                ("id", "name", "billing_type", "trunks"),
                required=("id", "billing_type"),
            )
            cid = r.ident(m, "id", path) if m is not None else None
            if m is None or cid is None or self.duplicate(out, cid, path, "customer"):
                continue
            trunks: list[Trunk] = []
            tpath = child(path, "trunks")
            for j, t in enumerate(r.sequence(m.get("trunks"), tpath)):
                trunk = self.trunk(t, child(tpath, j), cid, plans, trunk_ids)
                if trunk is not None:
                    trunks.append(trunk)
            out[cid] = Customer(
                cid,
                r.text(m, "name", path) or cid,
                r.choice(m, "billing_type", path, BILLING_TYPES, "prepaid"),
                tuple(trunks),
            )
        return out

    def trunk(
        self,
        value: Any,
        path: str,
        customer: str,
        plans: Mapping[str, RatePlan],
        seen: dict[str, str],
    ) -> Trunk | None:
        r = self.r
        m = r.mapping(
            value,
            path,
            ("id", "addresses", "rate_plan", "tech_prefix"),
            required=("id", "addresses"),
        )
        tid = r.ident(m, "id", path) if m is not None else None
        if m is None or tid is None or self.duplicate(seen, tid, path, "trunk"):
            return None
        seen[tid] = path
        owner = f"trunk {tid!r}"
        self.paths[owner] = path
        addresses = self.addresses(m, path, owner)
        tech_prefix = r.text(m, "tech_prefix", path, "") or ""
        plan = self.plan_ref(m, path, plans, Scope.CUSTOMER, "a trunk")
        return Trunk(tid, customer, addresses, plan, tech_prefix)

    def addresses(self, m: Mapping[str, Any], path: str, owner: str) -> tuple[Endpoint, ...]:
        """The `addresses` list; each parsed one is also claimed for the overlap check."""
        r = self.r
        apath = child(path, "addresses")
        out: list[Endpoint] = []
        for k, item in enumerate(r.sequence(m.get("addresses"), apath)):
            sub = child(apath, k)
            if isinstance(item, (list, dict)) or item is None:
                r.problem(sub, "must be an address string such as 10.0.0.1:5060")
                continue
            try:
                endpoint = parse_endpoint(str(item))
            except ValueError as exc:
                r.problem(sub, str(exc))
                continue
            out.append(endpoint)
            self.claims.append(Claim(endpoint, owner, sub, r.line(sub)))
        return tuple(out)

    def clients(
        self,
        value: Any,
        networks: Mapping[str, Network],
        join_codes: Mapping[str, JoinCode],
        plans: Mapping[str, RatePlan],
        sub: Subscription,
    ) -> dict[str, VMGateClient]:
        r = self.r
        out: dict[str, VMGateClient] = {}
        captures: dict[int, str] = {}
        keys = ("id", "name", "network", "join_code", "addresses", "capture_id", "rate_plan")
        items = r.sequence(value, "vmgateclients")
        for i, item in enumerate(items):
            path = child("vmgateclients", i)
            m = r.mapping(item, path, keys, required=("id", "network"))
            cid = r.ident(m, "id", path) if m is not None else None
            if m is None or cid is None or self.duplicate(out, cid, path, "VMGateClient"):
                continue
            network = r.text(m, "network", path) or ""
            if network and network not in networks:
                r.problem(
                    child(path, "network"), f"{network!r} is not a network; {_known(networks)}"
                )
            code = r.text(m, "join_code", path)
            reseller: str | None = None
            if code is not None:
                jc = join_codes.get(code)
                if jc is None:
                    r.problem(
                        child(path, "join_code"),
                        f"{code!r} is not a join code; {_known(join_codes)}",
                    )
                else:
                    reseller = jc.reseller
                    if network and jc.network != network:
                        r.problem(
                            child(path, "join_code"),
                            f"{code!r} enrolls into network {jc.network!r}, but this "
                            f"client is on {network!r}; use a code of {network!r}",
                        )
            capture = r.integer(m, "capture_id", path, None, low=0, high=2**32 - 1)
            if capture is not None:
                if capture in captures:
                    r.problem(
                        child(path, "capture_id"),
                        f"{capture} is already the capture "
                        f"id of client {captures[capture]!r}; each must be unique",
                    )
                captures[capture] = cid
            owner = f"VMGateClient {cid!r}"
            self.paths[owner] = path
            addresses = self.addresses(m, path, owner)
            if not addresses and capture is None and "addresses" not in m:
                r.problem(
                    path, "needs addresses or a capture_id, or its calls cannot be attributed to it"
                )
            out[cid] = VMGateClient(
                id=cid,
                name=r.text(m, "name", path) or cid,
                network=network,
                join_code=code,
                reseller=reseller,
                addresses=addresses,
                capture_id=capture,
                rate_plan=self.plan_ref(m, path, plans, Scope.VMGATECLIENT, "a VMGateClient"),
            )
        limit = sub.client_limit
        if len(items) > limit:
            packs = sum(sub.seat_packs)
            r.problem(
                child("vmgateclients", limit),
                f"{len(items)} VMGateClients but the subscription allows {limit} "
                f"({sub.plan or 'plan'} {sub.limits.vmgateclients} + seat packs {packs}); "
                "add a seat pack or remove a client",
            )
        return out

    def ledger(self, value: Any) -> LedgerTuning:
        r = self.r
        d = LedgerTuning()
        m = r.mapping(value or {}, "ledger", ("batch_max", "batch_ms", "queue_max")) or {}
        # Not `... or default`: batch_ms 0 (commit each group at once) is a real setting and
        # was silently read as the default 5. Upper bounds: a group or a queue past these
        # is memory, not tuning (the queue is the back-pressure bound).
        batch_max = r.integer(m, "batch_max", "ledger", d.batch_max, low=1, high=100_000)
        batch_ms = r.integer(m, "batch_ms", "ledger", d.batch_ms, low=0, high=10_000)
        queue_max = r.integer(m, "queue_max", "ledger", d.queue_max, low=1, high=10_000_000)
        assert batch_max is not None and batch_ms is not None and queue_max is not None
        return LedgerTuning(batch_max, batch_ms, queue_max)

    # -- cross checks -----------------------------------------------------------------------

    def duplicate(self, seen: Mapping[str, Any], key: str, path: str, what: str) -> bool:
        if key in seen:
            self.r.problem(path, f"{what} {key!r} is defined twice; ids must be unique")
            return True
        return False

    def check_overlaps(self) -> None:
        for kind, rule in (
            ("trunk", "a source address must identify one trunk"),
            ("VMGateClient", "a destination address must identify one VMGateClient"),
        ):
            claims = [c for c in self.claims if c.owner.startswith(kind + " ")]
            for late, early in find_overlaps(claims):
                self.r.problem(
                    late.path,
                    f"{late.endpoint} overlaps {early.endpoint} of {early.owner} "
                    f"(line {early.line}); {rule}",
                )

    def warnings(
        self,
        customers: Mapping[str, Customer],
        resellers: Mapping[str, Reseller],
        clients: Mapping[str, VMGateClient],
    ) -> Iterator[Problem]:
        """Not refusals: things that leave calls unrated and skew the totals."""
        file = self.r.doc.file
        groups: tuple[tuple[str, Iterable[Trunk | Reseller | VMGateClient], str], ...] = (
            ("trunk", (t for c in customers.values() for t in c.trunks), "charges"),
            ("VMGateClient", clients.values(), "payouts"),
            ("reseller", resellers.values(), "payouts"),
        )
        for kind, items, what in groups:
            for item in items:
                if item.rate_plan is None:
                    path = self.paths[f"{kind} {item.id!r}"]
                    yield Problem(
                        file,
                        self.r.line(path),
                        path,
                        f"{kind} {item.id!r} has no rate_plan; its {what} will be unrated",
                    )


def _known(names: Mapping[str, Any]) -> str:
    if not names:
        return "none is defined"
    listed = sorted(names)
    more = f", … ({len(listed)} in all)" if len(listed) > 8 else ""
    return "known: " + ", ".join(listed[:8]) + more
