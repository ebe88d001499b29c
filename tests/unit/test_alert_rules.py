"""SPEC §9 shipped monitoring: alert rules check out and every expression names a real metric."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from vmgated.heap import GcClock
from vmgated.metrics import BalanceSummary, Counters, MetricsCollector, MetricsSettings

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "conf" / "prometheus" / "vmgated-rules.yml"
DASHBOARD = ROOT / "conf" / "grafana" / "vmgated.json"
METRIC = re.compile(r"\bvmgated_[a-z_]+")


class _Balances:
    def summary(self, currency: str) -> BalanceSummary:
        return BalanceSummary(1, 2, 3, 4)

    def accounts(self, currency: str) -> Iterable[tuple[str, str, int]]:
        return [("customer", "acme", 5)]


def exported_names() -> set[str]:
    """Every series name metrics.py renders with all providers wired and counters non-empty."""
    counters = Counters()
    counters.count_packets("hep", "ok")
    counters.record_call(customer="a", client="b", trunk="t", disposition="answered", billsec=3,
                         unrated_reason="no_destination", negative_margin=True)
    collector = MetricsCollector(
        counters, settings=MetricsSettings(concurrent_ports_limit=10,
                                           account_info=(("customer", "acme", "prepaid"),)),
        balances=_Balances(), active_calls=lambda: {("t", "b"): 1}, udp_drops=lambda: 0,
        queue_depth=lambda: 0, gc_clock=GcClock(), dialog_events=lambda: {"overflow": 0},
        process_metrics=False)
    text = collector.render().decode()
    return {m.group(0) for m in METRIC.finditer(text)}


def names_in(expr: str) -> set[str]:
    return {m.group(0) for m in METRIC.finditer(expr)}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool") or ("/usr/bin/promtool"
                                            if Path("/usr/bin/promtool").exists() else None)
    if promtool is None:
        # No Prometheus package on this machine: the schema check below still runs.
        test_rules_follow_the_prometheus_schema()
        return
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_follow_the_prometheus_schema() -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    names = set()
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert group["name"] not in names
        names.add(group["name"])
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert rule["alert"][0].isupper() and isinstance(rule["expr"], str)
            if "for" in rule:
                assert re.fullmatch(r"\d+[smhd]", rule["for"])
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}
            assert {"summary", "description"} <= set(rule["annotations"])


def test_rules_cover_the_spec_alerts() -> None:
    by_metric: dict[str, str] = {}
    for rule in rules():
        for name in names_in(rule["expr"]):
            by_metric[name] = rule["alert"]
    for needed in ("vmgated_account_balance", "vmgated_owed_to_clients",
                   "vmgated_owed_to_resellers", "vmgated_packets_total",
                   "vmgated_udp_receive_errors_total", "vmgated_unrated_calls_total",
                   "vmgated_negative_margin_calls_total"):
        assert needed in by_metric, f"no alert on {needed}"
    assert any('up{job="vmgated"}' in rule["expr"] for rule in rules())


def test_rule_expressions_name_exported_metrics() -> None:
    exported = exported_names()
    for rule in rules():
        assert names_in(rule["expr"]) <= exported, rule["alert"]


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from _panels(panel.get("panels", []))


def test_dashboard_panels_query_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    exprs = [(p["title"], t["expr"]) for p in _panels(dashboard["panels"])
             for t in p.get("targets", [])]
    assert exprs
    for title, expr in exprs:
        used = names_in(expr)
        assert used, f"panel {title!r} queries no vmgated metric: {expr}"
        assert used <= exported, f"panel {title!r}: {used - exported} not exported"


def test_dashboard_shows_what_the_spec_promises() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(_panels(dashboard["panels"]))
    stats = {p["title"] for p in panels if p["type"] == "stat"}
    assert stats == {"My Balance", "Customer Total", "Owed to VMGateClients",
                     "Owed to Resellers"}
    titles = " | ".join(p["title"] for p in panels)
    for word in ("Calls/s", "ASR per trunk", "ASR per VMGateClient", "ACD per trunk",
                 "ACD per VMGateClient", "Margin", "port limit", "Drops", "Ledger commit",
                 "cycle collector"):
        assert word in titles, word
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))


def _promtool() -> str | None:
    return shutil.which("promtool") or ("/usr/bin/promtool"
                                        if Path("/usr/bin/promtool").exists() else None)


def run_rule_test(promtool: str, tmp_path: Path, test: dict[str, Any]) -> None:
    """`promtool test rules` on one unit-test document; fail with promtool's own words."""
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(test))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_low_prepaid_alert_fires_for_a_customer_with_no_postings(tmp_path: Path) -> None:
    # The exporter's own text as promtool's input: `orbit` (prepaid, never called or paid)
    # must alert at 0, `acme` (prepaid, 5.000000) too, `bigco` (prepaid, 50) not. Before,
    # an account without postings had no balance series and the rule's join never saw it.
    class Held:
        def summary(self, currency: str) -> BalanceSummary:
            return BalanceSummary(0, 0, 0, 0)

        def accounts(self, currency: str) -> Iterable[tuple[str, str, int]]:
            return [("customer", "acme", 5_000_000), ("customer", "bigco", 50_000_000)]

    info = tuple(("customer", c, "prepaid") for c in ("acme", "bigco", "orbit"))
    collector = MetricsCollector(
        Counters(), settings=MetricsSettings(
            account_info=info, accounts=tuple((k, c) for k, c, _ in info)),
        balances=Held(), active_calls=lambda: {}, udp_drops=lambda: 0, queue_depth=lambda: 0,
        gc_clock=GcClock(), process_metrics=False)
    text = collector.render().decode()
    series = [line.rsplit(" ", 1) for line in text.splitlines()
              if line.startswith(("vmgated_account_balance{", "vmgated_account_info{"))]
    assert 'vmgated_account_balance{currency="USD",kind="customer",account="orbit"}' in {
        s for s, _ in series}
    promtool = _promtool()
    if promtool is None:
        return  # no Prometheus package here: the series check above is what can run
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": f"{v}x10"} for s, v in series],
            "alert_rule_test": [{
                "eval_time": "6m", "alertname": "VmgatedPrepaidBalanceLow",
                "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "currency": "USD",
                                    "kind": "customer", "account": who,
                                    "billing_type": "prepaid"},
                     "exp_annotations": {
                         "summary": f"Prepaid customer {who} is low on credit",
                         "description": f"Balance {bal} USD (below 10). Ask for a top-up "
                                        "before calls are refused."}}
                    for who, bal in (("acme", "5"), ("orbit", "0"))],
            }],
        }],
    }
    run_rule_test(promtool, tmp_path, test)


def test_a_state_disk_that_refuses_writes_is_its_own_critical_alert(tmp_path: Path) -> None:
    """Ledger retries and journal write errors (a full disk) used to surface only after
    10 minutes as the warning "vmgated drops ledger datagrams (retry)": not drops, and
    urgent (calls wait in memory)."""
    promtool = _promtool()
    if promtool is None:
        return  # no Prometheus package here: the promtool check above falls back too
    labels = 'instance="gw:9100",job="vmgated"'
    series = {
        f'vmgated_packets_total{{{labels},input="ledger",result="retry"}}': "0+30x20",
        f'vmgated_packets_total{{{labels},input="journal",result="write_error"}}': "0+300x20",
        f'vmgated_packets_total{{{labels},input="hep",result="ok"}}': "0+600x20",
    }
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "VmgatedStateNotWritten",
                 "exp_alerts": [
                     {"exp_labels": {"severity": "critical", "instance": "gw:9100",
                                     "job": "vmgated", "input": inp},
                      "exp_annotations": {
                          "summary": f"vmgated cannot write its state directory ({inp})",
                          "description": f"{count} write failures in 5 minutes (disk full, "
                          "read-only or failing disk: df, dmesg). ledger: finished calls wait "
                          "in memory and are billed once there is room; journal: datagrams "
                          "are billed but not crash-safe. Do not restart while it fires: what "
                          "the journal could not write is only in memory."}}
                     for inp, count in (("journal", "1.5k"), ("ledger", "150"))]},
                {"eval_time": "15m", "alertname": "VmgatedPacketsDropped", "exp_alerts": []},
            ],
        }],
    }
    run_rule_test(promtool, tmp_path, test)


def test_a_growing_ledger_backlog_warns_before_memory_runs_out(tmp_path: Path) -> None:
    """Calls waiting for the ledger hold ~6 KB each (measured on a full-disk tmpfs): a slow
    disk that never fails a commit raises no retry, so the depth itself has to alert."""
    promtool = _promtool()
    if promtool is None:
        return  # no Prometheus package here: the promtool check above falls back too
    labels = 'instance="gw:9100",job="vmgated"'
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # Normal traffic: a burst above the line for less than a minute, then growth.
                {"series": f"vmgated_ledger_queue_depth{{{labels}}}",
                 "values": "3 40 12000 5 8 6000 12000 18000 24000"},
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "VmgatedLedgerBacklog", "exp_alerts": []},
                {"eval_time": "7m", "alertname": "VmgatedLedgerBacklog",
                 "exp_alerts": [{
                     "exp_labels": {"severity": "warning", "instance": "gw:9100",
                                    "job": "vmgated"},
                     "exp_annotations": {
                         "summary": "18k finished calls wait for the ledger",
                         "description": "Billing is behind: the ledger takes calls more "
                         "slowly than they end, or cannot write (see VmgatedStateNotWritten). "
                         "Each waiting call holds about 6 KB of memory (20,000 waiting: ~100 "
                         "MB RSS) until it is committed; check the disk under the state "
                         "directory (iostat, df)."}}]},
            ],
        }],
    }
    run_rule_test(promtool, tmp_path, test)
