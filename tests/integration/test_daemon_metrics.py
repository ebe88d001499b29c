"""SPEC §9 over real HTTP: money series equal `vmgatectl balances`, active calls by party."""

from __future__ import annotations

from pathlib import Path

from sipcalls import (
    BASE,
    Call,
    S,
    harness,
    make_env,
    send,
    setup_messages,
    teardown_messages,
    to_hep,
    wait_for,
)


def test_money_series_equal_balances_and_active_calls_are_shown(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    try:
        env.send(*[Call(f"m-{i}", start=BASE + i * S, answer=BASE + (i + 1) * S,
                        end=BASE + (i + 1) * S + 7_300_000 * (i + 1)) for i in range(5)])
        env.wait_calls(5)
        env.ctl("pay", "acme", "3.333333", "--ref", "M-1")
        env.ctl("payout", "client", "gw-01", "0.000001", "--ref", "M-2")
        up = Call("m-up", start=BASE + 60 * S, answer=BASE + 61 * S, end=None)
        send(env.hep_port, to_hep(setup_messages(up)))
        wait_for(lambda: env.ctl_json("status")["active_calls"] == 1)

        balances = env.ctl_json("balances")
        text = env.scrape()
        value = harness.metric_value
        usd = {"currency": "USD"}
        assert value(text, "vmgated_tenant_balance", **usd) == balances["my_balance"]
        assert value(text, "vmgated_customer_total", **usd) == balances["customer_total"]
        assert value(text, "vmgated_owed_to_clients", **usd) == \
            balances["owed_to_vmgateclients"]
        assert value(text, "vmgated_owed_to_resellers", **usd) == balances["owed_to_resellers"]
        for acct in balances["accounts"]:
            if acct["kind"] in ("tenant", "external"):
                continue  # the tenant's is vmgated_tenant_balance; external is no party's
            assert value(text, "vmgated_account_balance", currency="USD", kind=acct["kind"],
                         account=acct["id"]) == acct["balance"], acct
        assert value(text, "vmgated_active_calls", trunk="acme-1", client="gw-01") == "1"
        assert value(text, "vmgated_calls_total", customer="acme", client="gw-01",
                     disposition="answered") == "5"
        # 8+15+22+30+37 billed seconds (ceil of 7.3 s × n)
        assert value(text, "vmgated_billed_seconds_total") == "112"
        assert value(text, "vmgated_packets_total", input="hep", result="ok") == str(5 * 12 + 8)

        env.send(Call("m-up", start=BASE + 60 * S, answer=BASE + 61 * S, end=BASE + 70 * S))
        env.wait_calls(6)
        wait_for(lambda: value(env.scrape(), "vmgated_active_calls", trunk="acme-1",
                               client="gw-01") in (None, "0"))
    finally:
        env.daemon.stop()


def test_hep_auth_key_drops_unauthenticated_datagrams_and_counts_them(tmp_path: Path) -> None:
    env = make_env(tmp_path, auth_key="s3cret")
    try:
        good = Call("auth-ok")
        bad = Call("auth-bad", start=BASE + 10 * S)
        none = Call("auth-none", start=BASE + 20 * S)
        msgs = setup_messages(good) + teardown_messages(good)
        send(env.hep_port, to_hep(msgs, auth_key=b"s3cret"))
        send(env.hep_port, to_hep(setup_messages(bad) + teardown_messages(bad),
                                  auth_key=b"wrong"))
        send(env.hep_port, to_hep(setup_messages(none) + teardown_messages(none)))
        env.wait_calls(1)
        wait_for(lambda: harness.metric_value(env.scrape(), "vmgated_packets_total",
                                              input="hep", result="auth") == "24")
        assert [c["call_id"] for c in env.calls()] == ["auth-ok"]
    finally:
        env.daemon.stop()
