"""Attribution and config-load speed for a large roster.

Generates a tenant with TRUNKS trunks (host:port addresses plus one /24 in ten) and CLIENTS
VMGateClients, then measures:

* `load_config` time (YAML parse, every check including the address-overlap sweep);
* `Attributor.attribute` calls/s on Kamailio-shaped records (two hops: carrier → proxy,
  proxy → gateway), beside a naive baseline that scans every `Endpoint.matches` in order,
  for two workloads: every record with its own hops tuple (as CDR lines come: the
  attributor's per-path memo always misses) and 50,000 calls over 500 paths whose tuples are
  shared (as the dialog tracker hands them over: the memo hits).

Run: /work/venv/bin/python bench/attribution.py [TRUNKS] [CLIENTS]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

# This file lives in bench/, beside bench/rating.py: that folder must not shadow the `rating`
# package the config loader imports.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from sip.call import CallRecord, Disposition, Hop  # noqa: E402
from vmgated.attribution import Attributor  # noqa: E402
from vmgated.config import Config, load_config  # noqa: E402

PROXY = ("192.0.2.1", 5060)


def roster(trunks: int, clients: int) -> str:
    lines = [
        "tenant: {name: Bench, currency: USD}",
        "subscription:",
        f"  plan: Enterprise\n  limits: {{vmgateclients: {clients}, concurrent_ports: 1, "
        "networks: 1}",
        "networks: [{id: n1}]",
        "join_codes: [{code: J1, network: n1}]",
        "customers:",
        "  - id: c\n    billing_type: postpaid\n    trunks:",
    ]
    for i in range(trunks):
        a, b = divmod(i, 250)
        c = i // 10
        addr = f"10.{c // 250}.{c % 250}.0/24" if i % 10 == 9 else f"172.16.{a}.{b + 1}:5060"
        lines.append(f'      - {{id: t{i}, addresses: ["{addr}"], rate_plan: p}}')
    lines.append("vmgateclients:")
    for i in range(clients):
        a, b = divmod(i, 250)
        lines.append(
            f'  - {{id: g{i}, network: n1, join_code: J1, addresses: ["100.64.{a}.{b + 1}:5060"],'
            f" capture_id: {i + 1}, rate_plan: q}}"
        )
    lines += [
        "rate_plans:",
        "  - {name: p, scope: customer, destinations: [{code: '', rate_per_min: '0.01'}]}",
        "  - {name: q, scope: vmgateclient, destinations: [{code: '', rate_per_min: '0.005'}]}",
    ]
    return "\n".join(lines) + "\n"


def records(config: Config, n: int) -> list[CallRecord]:
    rng = random.Random(7)
    out = []
    for k in range(n):
        trunk = rng.choice(config.trunks)
        ep = trunk.addresses[0]
        src = (str(ep.network.network_address + (5 if not ep.is_host else 0)), ep.port or 5060)
        client = rng.choice(config.vmgateclients).addresses[0]
        dst = (str(client.network.network_address), client.port or 5060)
        out.append(
            CallRecord(
                f"c{k}",
                "t",
                "a",
                "44",
                0,
                1,
                2,
                200,
                Disposition.ANSWERED,
                (Hop(src, PROXY, 1), Hop(PROXY, dst, 1)),
            )
        )
    return out


def naive(config: Config, record: CallRecord) -> tuple[str | None, str | None]:
    trunk = next(
        (
            t.id
            for h in record.hops
            for t in config.trunks
            for e in t.addresses
            if e.matches(*h.src)
        ),
        None,
    )
    client = next(
        (
            c.id
            for h in record.hops
            for c in config.vmgateclients
            for e in c.addresses
            if e.matches(*h.dst)
        ),
        None,
    )
    return trunk, client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trunks", type=int, nargs="?", default=2000)
    parser.add_argument("clients", type=int, nargs="?", default=2000)
    args = parser.parse_args()
    trunks, clients = args.trunks, args.clients
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vmgated.yaml"
        path.write_text(roster(trunks, clients))
        t0 = time.perf_counter()
        config = load_config(path, env={})
        load_s = time.perf_counter() - t0
    print(f"load_config, {trunks} trunks + {clients} clients: {load_s:.3f} s")
    calls = records(config, 50_000)
    paths = records(config, 500)
    rng = random.Random(11)
    shared = [rng.choice(paths) for _ in range(50_000)]  # same hops tuple objects per path
    rates = []
    for workload in (calls, shared):
        attributor = Attributor(config)
        t0 = time.perf_counter()
        for r in workload:
            attributor.attribute(r)
        rates.append(len(workload) / (time.perf_counter() - t0))
    fast = rates[0]
    sample = calls[:200]
    t0 = time.perf_counter()
    for r in sample:
        assert naive(config, r) == (lambda a: (a.trunk, a.client))(attributor.attribute(r))
    slow = len(sample) / (time.perf_counter() - t0)
    print(
        f"attribute: {fast:,.0f} calls/s with unshared hops, {rates[1]:,.0f} calls/s over 500 "
        f"shared paths; baseline linear Endpoint.matches scan: {slow:,.0f} calls/s "
        f"({fast / slow:,.0f}x)"
    )


if __name__ == "__main__":
    main()
