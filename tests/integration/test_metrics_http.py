"""SPEC §9: GET /metrics over real HTTP, exact money text, names and labels as specified."""

from __future__ import annotations

import asyncio
import gc
import re
import urllib.error
import urllib.request
from collections.abc import Iterable

import uvloop
from prometheus_client.parser import text_string_to_metric_families

from vmgated.heap import GcClock
from vmgated.metrics import (
    BalanceSummary,
    Counters,
    Histogram,
    MetricsCollector,
    MetricsServer,
    MetricsSettings,
)

SPEC_NAMES = {
    "vmgated_tenant_balance", "vmgated_customer_total", "vmgated_owed_to_clients",
    "vmgated_owed_to_resellers", "vmgated_account_balance", "vmgated_active_calls",
    "vmgated_concurrent_ports_limit", "vmgated_calls_total", "vmgated_billed_seconds_total",
    "vmgated_unrated_calls_total", "vmgated_negative_margin_calls_total",
    "vmgated_packets_total", "vmgated_udp_receive_errors_total",
    "vmgated_ledger_commit_seconds",
}


class Balances:
    """A stand-in for the ledger projection: plain integers in micro-units."""

    def summary(self, currency: str) -> BalanceSummary:
        return BalanceSummary(12_345_678, -100_000_000_000_001, 7, 0)

    def accounts(self, currency: str) -> Iterable[tuple[str, str, int]]:
        return [("customer", "acme", -100_000_000_000_001), ("client", "gw-01", 7),
                ("external", "", 99_995_400), ("reseller", 'r-"q"', 0),
                ("tenant", "", 654_497)]


def populated(per_account: bool = True) -> MetricsCollector:
    counters = Counters()
    counters.count_packets("hep", "ok", 120)
    counters.count_packets("hep", "source", 3)
    counters.record_call(customer="acme", client="gw-01", trunk="acme-1",
                         disposition="answered", billsec=61)
    counters.record_call(customer="acme", client="gw-01", trunk="acme-1", disposition="busy",
                         billsec=0)
    counters.record_call(customer="acme", client=None, trunk="acme-1", disposition="answered",
                         billsec=5, unrated_reason="no_destination", negative_margin=True)
    histogram = Histogram()
    histogram.observe(0.0007)
    histogram.observe(0.003)
    settings = MetricsSettings(currencies=("USD",), concurrent_ports_limit=200,
                               per_account=per_account,
                               account_info=(("customer", "acme", "prepaid"),
                                             ("customer", "orbit", "prepaid")),
                               accounts=(("customer", "acme"), ("customer", "orbit")))
    return MetricsCollector(counters, settings=settings, balances=Balances(),
                            active_calls=lambda: {("acme-1", "gw-01"): 4},
                            udp_drops=lambda: 9, queue_depth=lambda: 2,
                            ledger_commit=histogram)


def scrape(collector: MetricsCollector, path: str = "/metrics") -> tuple[int, str, str]:
    async def main() -> tuple[int, str, str]:
        server = MetricsServer(collector, "127.0.0.1", 0)
        await server.start()
        host, port = server.sockname

        def get() -> tuple[int, str, str]:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as resp:
                    return resp.status, resp.headers["Content-Type"], resp.read().decode()
            except urllib.error.HTTPError as err:
                return err.code, err.headers["Content-Type"], err.read().decode()

        try:
            return await asyncio.to_thread(get)
        finally:
            await server.stop()

    return uvloop.run(main())


def value_of(text: str, series: str) -> str:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return line.split(" ", 1)[1]
    raise AssertionError(f"{series} not in scrape")


def test_scrape_serves_every_spec_metric() -> None:
    status, ctype, text = scrape(populated())
    assert status == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    names = {fam.name for fam in text_string_to_metric_families(text)}
    # The parser strips `_total` from counter family names.
    exposed = {re.sub(r"(_bucket|_sum|_count)$", "", line.split("{")[0].split(" ")[0])
               for line in text.splitlines() if line.startswith("vmgated_")}
    assert exposed >= SPEC_NAMES, SPEC_NAMES - exposed
    assert "process_resident_memory_bytes" in names


def test_money_is_rendered_exactly_from_micro_units() -> None:
    _, _, text = scrape(populated())
    assert value_of(text, 'vmgated_tenant_balance{currency="USD"}') == "12.345678"
    # 100 million and one micro-unit: float64 would print -100000000.00000001 as -1e8.
    assert value_of(text, 'vmgated_customer_total{currency="USD"}') == "-100000000.000001"
    assert value_of(text, 'vmgated_owed_to_clients{currency="USD"}') == "0.000007"
    assert value_of(text, 'vmgated_owed_to_resellers{currency="USD"}') == "0.000000"
    assert value_of(
        text, 'vmgated_account_balance{currency="USD",kind="customer",account="acme"}'
    ) == "-100000000.000001"
    assert value_of(  # label values are escaped
        text, 'vmgated_account_balance{currency="USD",kind="reseller",account="r-\\"q\\""}'
    ) == "0.000000"


def test_every_configured_account_has_a_balance_series_and_only_those_kinds() -> None:
    _, _, text = scrape(populated())
    # No posting yet: still exported, at 0, so a low-prepaid-balance alert sees it.
    assert value_of(
        text, 'vmgated_account_balance{currency="USD",kind="customer",account="orbit"}'
    ) == "0.000000"
    # Accounts with postings but not (or no longer) configured are kept: they hold money.
    assert value_of(
        text, 'vmgated_account_balance{currency="USD",kind="client",account="gw-01"}'
    ) == "0.000007"
    # The tenant's balance has its own series; `external` is no party's account.
    kinds = set(re.findall(r'vmgated_account_balance\{currency="USD",kind="(\w+)"', text))
    assert kinds == {"customer", "client", "reseller"}


def test_call_and_input_counters() -> None:
    _, _, text = scrape(populated())
    assert value_of(
        text, 'vmgated_calls_total{customer="acme",client="gw-01",disposition="answered"}'
    ) == "1"
    assert value_of(
        text, 'vmgated_calls_total{customer="acme",client="unknown",disposition="answered"}'
    ) == "1"
    assert value_of(text, "vmgated_billed_seconds_total") == "66"
    assert value_of(text, 'vmgated_unrated_calls_total{reason="no_destination"}') == "1"
    assert value_of(text, "vmgated_negative_margin_calls_total") == "1"
    assert value_of(text, 'vmgated_packets_total{input="hep",result="ok"}') == "120"
    assert value_of(text, 'vmgated_packets_total{input="hep",result="source"}') == "3"
    assert value_of(text, "vmgated_udp_receive_errors_total") == "9"
    assert value_of(text, 'vmgated_trunk_attempts_total{trunk="acme-1"}') == "3"
    assert value_of(text, 'vmgated_trunk_answered_total{trunk="acme-1"}') == "2"
    assert value_of(text, 'vmgated_trunk_billed_seconds_total{trunk="acme-1"}') == "66"
    assert value_of(text, 'vmgated_client_answered_total{client="gw-01"}') == "1"
    assert value_of(text, 'vmgated_active_calls{trunk="acme-1",client="gw-01"}') == "4"
    assert value_of(text, "vmgated_concurrent_ports_limit") == "200"
    assert value_of(text, "vmgated_ledger_queue_depth") == "2"


def test_commit_latency_histogram_is_cumulative() -> None:
    _, _, text = scrape(populated())
    assert value_of(text, 'vmgated_ledger_commit_seconds_bucket{le="0.0005"}') == "0"
    assert value_of(text, 'vmgated_ledger_commit_seconds_bucket{le="0.001"}') == "1"
    assert value_of(text, 'vmgated_ledger_commit_seconds_bucket{le="0.005"}') == "2"
    assert value_of(text, 'vmgated_ledger_commit_seconds_bucket{le="+Inf"}') == "2"
    assert value_of(text, "vmgated_ledger_commit_seconds_count") == "2"
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["vmgated_ledger_commit_seconds"].type == "histogram"


def test_collector_pauses_are_exported_per_generation() -> None:
    clock = GcClock()
    clock.seconds = [0.25, 0.0, 1.5]
    clock.longest = 0.75
    collector = populated()
    collector.gc_clock = clock
    _, _, text = scrape(collector)
    assert value_of(text, 'vmgated_gc_pause_seconds_total{generation="0"}') == "0.25"
    assert value_of(text, 'vmgated_gc_pause_seconds_total{generation="2"}') == "1.5"
    assert value_of(text, "vmgated_gc_pause_max_seconds") == "0.75"
    assert int(value_of(text, 'vmgated_gc_collections_total{generation="0"}')) > 0
    assert value_of(text, "vmgated_gc_frozen_objects") == str(gc.get_freeze_count())
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["vmgated_gc_pause_seconds"] == "counter"
    assert "vmgated_gc_pause_seconds_total" not in scrape(populated())[2]  # not wired: absent


def test_per_account_series_can_be_switched_off() -> None:
    _, _, text = scrape(populated(per_account=False))
    assert "vmgated_account_balance" not in text
    assert "vmgated_account_info" not in text
    assert value_of(text, 'vmgated_tenant_balance{currency="USD"}') == "12.345678"


def test_a_failing_provider_loses_only_its_own_series() -> None:
    collector = populated()

    def broken() -> int:
        raise RuntimeError("projection not loaded")

    collector.udp_drops = broken
    status, _, text = scrape(collector)
    assert status == 200
    assert "vmgated_udp_receive_errors_total" not in text
    assert value_of(text, 'vmgated_tenant_balance{currency="USD"}') == "12.345678"


def test_other_paths_are_not_found() -> None:
    status, _, _ = scrape(populated(), "/nope")
    assert status == 404


def test_scrape_runs_on_the_loop_without_blocking_it_for_long() -> None:
    # 10,000 accounts: the scrape must stay well under a pipeline tick budget.
    class Many(Balances):
        def accounts(self, currency: str) -> Iterable[tuple[str, str, int]]:
            return [("customer", f"c{i}", i * 1_000_001) for i in range(10_000)]

    collector = populated()
    collector.balances = Many()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        body = collector.render()
        assert body.count(b"vmgated_account_balance{") == 10_000 + 2  # + acme, orbit at 0
        return loop.time() - start

    assert uvloop.run(main()) < 0.5


def test_a_client_that_never_reads_its_answer_is_dropped() -> None:
    # Each such client held a socket and a task for ever (drain without a timeout).
    class Huge:
        def render(self) -> bytes:
            return b"# padding\n" * 3_000_000  # 30 MB: more than both socket buffers hold

    async def main() -> bool:
        server = MetricsServer(Huge(), "127.0.0.1", 0)  # type: ignore[arg-type]
        server.WRITE_TIMEOUT = 0.5
        await server.start()
        host, port = server.sockname
        reader, writer = await asyncio.open_connection(host, port, limit=1024)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1.5)  # read nothing meanwhile
        # Dropped: what is left to read ends (EOF or reset) long before 30 MB have come.
        got = 0
        try:
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 5):
                got += len(chunk)
        except ConnectionError:
            pass
        writer.close()
        await server.stop()
        return got < 30_000_000

    assert uvloop.run(main())


def test_dialog_tracker_events_are_counters_by_kind() -> None:
    # A call refused because the dialog table is full was counted only inside the tracker.
    collector = populated()
    collector.dialog_events = lambda: {"overflow": 3, "unknown_bye": 7, "late": 0}
    _, _, text = scrape(collector)
    assert value_of(text, 'vmgated_dialog_events_total{event="overflow"}') == "3"
    assert value_of(text, 'vmgated_dialog_events_total{event="unknown_bye"}') == "7"
    assert value_of(text, 'vmgated_dialog_events_total{event="late"}') == "0"
    assert "# TYPE vmgated_dialog_events_total counter" in text
