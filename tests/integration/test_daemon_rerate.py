"""SPEC §5 unrated calls and `vmgatectl rerate`: rated later, reversal kept, books balanced."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from sipcalls import Call, harness, make_env, wait_for

HEADER = ("code,description,valid_since,valid_until,rate_per_min,connection_fee,"
          "connection_sec,billing_block_sec\n")
ROWS = "1,USA/Canada,2026-01-01T00:00:00Z,,0.0058,,60,60\n"  # no catch-all


def test_unrated_call_is_recorded_then_rerated_after_the_prefix_is_added(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path, start=False)
    env.deck("retail-a.csv").write_text(HEADER + ROWS)
    env.daemon.start()
    try:
        env.send(Call("uk-1", number="442071234567"), Call("us-1"))
        env.wait_calls(2)
        unrated = env.calls("--unrated")
        assert [c["call_id"] for c in unrated] == ["uk-1"]
        assert unrated[0]["legs"]["customer"] == {"plan": "retail-a", "unrated": "no_rate"}
        assert "unrated" in unrated[0]["flags"]
        assert "amount" in unrated[0]["legs"]["vmgateclient"]  # the gateway is still paid
        assert "amount" in unrated[0]["legs"]["reseller"]
        wait_for(lambda: harness.metric_value(env.scrape(), "vmgated_unrated_calls_total",
                                              reason="no_rate") == "1")
        before = env.ctl_json("balances")
        head_before = env.ctl_json("ledger", "head")["seq"]
        out = env.ctl("rerate")
        assert out.stdout.strip() == "examined 1, rerated 0, still unrated 1"

        env.deck("retail-a.csv").write_text(
            HEADER + ROWS + "44,UK,2026-01-01T00:00:00Z,,0.1200,0.0100,60,60\n")
        assert env.ctl("reload").stdout.strip() == "reloaded"
        result = env.ctl_json("rerate")
        assert result == {"examined": 1, "rerated": 1, "still_unrated": 0}
        assert env.calls("--unrated") == []
        uk = next(c for c in env.calls() if c["call_id"] == "uk-1")
        assert uk["legs"]["customer"]["prefix"] == "44"
        assert uk["legs"]["customer"]["amount"] == "0.130000"  # 0.01 + 0.12 × 60/60
        assert "unrated" not in uk["flags"]
        payouts = sum(Decimal(uk["legs"][p]["amount"]) for p in ("vmgateclient", "reseller"))
        assert Decimal(uk["margin"]) == Decimal("0.13") - payouts
        assert len(env.calls()) == 2
        # History keeps the first rating: a reversal and the new rating, two more entries.
        assert env.ctl_json("ledger", "head")["seq"] == head_before + 2
        after = env.ctl_json("balances")
        moved = Decimal(after["customer_total"]) - Decimal(before["customer_total"])
        assert moved == Decimal("-0.13")
        assert Decimal(after["my_balance"]) - Decimal(before["my_balance"]) == Decimal("0.13")
        assert after["owed_to_vmgateclients"] == before["owed_to_vmgateclients"]
        verify = env.ctl_json("ledger", "verify")
        assert verify["ok"] is True and verify["transactions"] == head_before + 2
        assert env.ctl_json("rerate") == {"examined": 0, "rerated": 0, "still_unrated": 0}
        assert env.ctl_json("ledger", "head")["seq"] == head_before + 2
    finally:
        env.daemon.stop()
