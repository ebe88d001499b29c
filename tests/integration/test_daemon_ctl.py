"""SPEC §8: every vmgatectl command against a running daemon, human and --json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sipcalls import BASE, Call, Env, S, make_env, send, setup_messages, to_hep, wait_for

from rating.units import format_time


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = make_env(tmp_path_factory.mktemp("ctl"))
    calls = [Call(f"ctl-{i}", start=BASE + i * 100 * S, answer=BASE + (i * 100 + 2) * S,
                  end=BASE + (i * 100 + 2 + 30 * (i + 1)) * S) for i in range(3)]
    calls.append(Call("ctl-busy", start=BASE + 400 * S, answer=None, end=BASE + 405 * S,
                      final=486))
    e.send(*calls)
    e.wait_calls(4)
    yield e
    e.daemon.stop()


def test_status(env: Env) -> None:
    data = env.ctl_json("status")
    assert data["active_calls"] == 0 and data["last_reload"] == "never"
    assert data["ledger_head"]["seq"] >= 4 and len(data["ledger_head"]["hash"]) == 64
    assert data["listeners"] == [f"hep udp 127.0.0.1:{env.hep_port}"]
    assert data["packets"]["hep/ok"] == 3 * 12 + 9
    human = env.ctl("status").stdout
    assert "active_calls" in human and f"127.0.0.1:{env.hep_port}" in human


def test_calls_filters(env: Env) -> None:
    every = env.calls()
    assert [c["call_id"] for c in every] == ["ctl-busy", "ctl-2", "ctl-1", "ctl-0"]  # newest
    shape = {"call_uid", "call_id", "trunk", "customer", "client", "network", "reseller",
             "caller", "callee", "number", "start", "answer", "end", "billsec", "sip_code",
             "disposition", "legs", "margin", "flags"}
    assert all(set(c) == shape for c in every)
    busy = every[0]
    assert (busy["disposition"], busy["sip_code"], busy["billsec"]) == ("busy", 486, 0)
    assert busy["answer"] is None and busy["legs"]["customer"]["amount"] == "0.000000"
    assert [c["billsec"] for c in every[1:]] == [90, 60, 30]
    assert len(env.calls("--customer", "acme")) == 4
    assert env.calls("--customer", "nobody") == []
    assert env.calls("--unrated") == []
    assert [c["call_id"] for c in env.calls("--limit", "2")] == ["ctl-busy", "ctl-2"]
    since = format_time(BASE + 100 * S)
    assert [c["call_id"] for c in env.calls("--since", since)] == ["ctl-busy", "ctl-2", "ctl-1"]
    assert len(env.calls("--since", str((BASE + 101 * S) // S))) == 2  # epoch seconds
    human = env.ctl("calls", "--limit", "2").stdout.splitlines()
    assert human[0].split()[:3] == ["start", "trunk", "client"]
    assert len(human) == 3 and "busy" in human[1] and "answered" in human[2]


def test_calls_active_while_a_call_is_up(env: Env) -> None:
    up = Call("ctl-up", start=BASE + 500 * S, answer=BASE + 501 * S, end=None)
    send(env.hep_port, to_hep(setup_messages(up)))
    wait_for(lambda: env.ctl_json("calls", "--active") != [])
    (active,) = env.ctl_json("calls", "--active")
    assert active["call_id"] == "ctl-up"
    assert (active["trunk"], active["client"], active["reseller"]) == ("acme-1", "gw-01",
                                                                       "r-alpha")
    assert active["answer"] == format_time(BASE + 501 * S)
    human = env.ctl("calls", "--active").stdout
    assert "acme-1" in human and "gw-01" in human
    # The history's filters select calls in progress too (they used to be ignored).
    start = format_time(BASE + 500 * S)
    after = format_time(BASE + 500 * S + 1)
    for flags, n in ((["--customer", "acme"], 1), (["--customer", "nobody"], 0),
                     (["--trunk", "acme-1"], 1), (["--client", "gw-02"], 0),
                     (["--reseller", "r-alpha"], 1), (["--reseller", "direct"], 0),
                     (["--since", start], 1), (["--since", after], 0),
                     (["--until", after], 1), (["--until", start], 0),
                     (["--limit", "0"], 0), (["--limit", "1", "--client", "gw-01"], 1)):
        assert len(env.ctl_json("calls", "--active", *flags)) == n, flags
    refused = env.ctl("calls", "--active", "--unrated", check=False)
    assert refused.returncode != 0 and "not rated until they end" in refused.stderr
    clients = env.ctl_json("clients")
    assert [(c["id"], c["online"]) for c in clients] == [("gw-01", True)]
    assert env.ctl_json("status")["active_calls"] == 1


def test_balances_pay_payout_payments(env: Env) -> None:
    before = env.ctl_json("balances")
    assert set(before) == {"currency", "my_balance", "customer_total", "owed_to_vmgateclients",
                           "owed_to_resellers", "accounts"}
    assert before["currency"] == "USD"
    total = Decimal(before["my_balance"]) + Decimal(before["owed_to_vmgateclients"]) + \
        Decimal(before["owed_to_resellers"]) + Decimal(before["customer_total"])
    assert total == 0  # zero-sum: the books balance with no payments yet
    out = env.ctl("pay", "acme", "25.50", "--ref", "BANK-1")
    assert "recorded as" in out.stdout
    again = env.ctl("pay", "acme", "25.50", "--ref", "BANK-1")
    assert "already recorded" in again.stdout
    receipt = json.loads(env.ctl("pay", "acme", "25.50", "--ref", "BANK-1", "--json").stdout)
    assert receipt["existed"] is True
    env.ctl("payout", "client", "gw-01", "0.001", "--ref", "OUT-1")
    env.ctl("payout", "reseller", "r-alpha", "0.0001", "--ref", "OUT-2")
    after = env.ctl_json("balances")
    assert Decimal(after["customer_total"]) - Decimal(before["customer_total"]) == \
        Decimal("25.5")
    assert Decimal(before["owed_to_vmgateclients"]) - Decimal(after["owed_to_vmgateclients"]) \
        == Decimal("0.001")
    assert after["my_balance"] == before["my_balance"]
    accounts = {(a["kind"], a["id"]): a["balance"] for a in after["accounts"]}
    assert accounts[("customer", "acme")] == after["customer_total"]
    human = env.ctl("balances").stdout
    assert "My Balance" in human and after["customer_total"] in human
    payments = env.ctl_json("payments")
    assert [(p["direction"], p["target_type"], p["target"], p["amount"], p["reference"])
            for p in payments] == [
        ("OUT", "Reseller", "r-alpha", "0.000100", "OUT-2"),
        ("OUT", "VMGateClient", "gw-01", "0.001000", "OUT-1"),
        ("IN", "Customer", "acme", "25.500000", "BANK-1"),
    ]
    assert "BANK-1" in env.ctl("payments").stdout
    for bad in (("pay", "acme", "-3", "--ref", "X"), ("pay", "acme", "abc", "--ref", "X"),
                ("pay", "nobody", "1", "--ref", "X"), ("payout", "client", "gw-99", "1",
                                                       "--ref", "X")):
        out = env.ctl(*bad, check=False)
        assert out.returncode == 1, bad
        assert out.stderr.startswith("vmgatectl: error:") and "Traceback" not in out.stderr
    out = env.ctl("pay", "acme", "25.50", "--ref", "BANK-1", "--json")
    conflict = env.ctl("pay", "acme", "30", "--ref", "BANK-1", check=False)
    assert conflict.returncode == 1 and "BANK-1" in conflict.stderr
    assert "Traceback" not in env.daemon.logs()


def test_rosters(env: Env) -> None:
    (reseller,) = env.ctl_json("resellers")
    assert reseller == {
        "id": "r-alpha", "name": "Alpha Gateways", "company": "Alpha LLC",
        "email": "ops@alpha.example", "clients": 1, "online": 1,
        "balance": reseller["balance"], "billing_type": "postpaid", "status": "active",
    }
    assert Decimal(reseller["balance"]) > 0
    (client,) = env.ctl_json("clients")
    assert (client["network"], client["reseller"], client["rate_plan"]) == (
        "yerevan-1", "r-alpha", "client-std")
    assert "Alpha Gateways" in env.ctl("resellers").stdout
    assert "gw-01" in env.ctl("clients").stdout


def test_ledger_verify_and_head(env: Env) -> None:
    report = env.ctl_json("ledger", "verify")
    assert report["ok"] is True and report["first_bad_seq"] is None
    head = env.ctl_json("ledger", "head")
    assert head["seq"] == report["head_seq"] and head["hash"] == report["head_hash"]
    assert env.ctl("ledger", "head").stdout.split() == [str(head["seq"]), head["hash"]]
    assert env.ctl("ledger", "verify").returncode == 0


def test_daemon_not_running_is_a_clear_refusal(env: Env) -> None:
    env.daemon.stop()
    try:
        for args in (("status",), ("pay", "acme", "1", "--ref", "Z"), ("calls", "--active"),
                     ("reload",), ("clients",), ("rerate",)):
            out = env.ctl(*args, check=False)
            assert out.returncode == 1, args
            assert "not running" in out.stderr, out.stderr
            assert "vmgated --config" in out.stderr and "Traceback" not in out.stderr
        # History reads the ledger file: the clerk can still read the books.
        assert len(env.calls()) == 4
        assert env.ctl_json("ledger", "verify")["ok"] is True
    finally:
        env.restart()
