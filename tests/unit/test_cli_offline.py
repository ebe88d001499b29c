"""vmgatectl check / rate / rates, run in-process (SPEC §7 refusals, §8 `rate` JSON shape)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmgated.cli.main import main
from vmgated.cli.output import render_table

CONFIGS = Path(__file__).resolve().parents[2] / "tests" / "data" / "configs"
SMALL = str(CONFIGS / "small.yaml")
BAD = str(CONFIGS / "bad.yaml")
AT = "2026-11-22T10:00:00Z"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- check -----------------------------------------------------------------------------------


def test_check_good_config_prints_ok_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", "--config", SMALL)
    assert code == 0 and err == ""
    assert out == (
        f"OK {SMALL}: Test Telecom (USD); 1 customer, 2 trunks, 3/12 VMGateClients, "
        "1/2 networks, 1 reseller, 2 join codes, 3 rate plans (8 destinations from 4 files)\n"
        "plan lock: not checked (vmgated is not running; a reload checks it)\n"
    )


def test_check_bad_config_lists_every_problem_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "check", "--config", BAD)
    assert code == 1
    deck = Path(CONFIGS / "decks" / "bad.csv")
    lines = out.splitlines()
    assert lines[0] == (
        f"{BAD}:11: customers[0].trunks[0].rate_plan: 'res' is a reseller plan; "
        "a trunk needs a customer plan"
    )
    assert lines[1] == f"{BAD}:13: vmgateclients[0].network: 'net-b' is not a network; known: net-a"
    assert lines[2].endswith(
        f"{deck.name}:3: code: '+4420' is not numeric; a code is digits "
        "only (write 4420, not +44 20), or empty for the catch-all"
    )
    assert lines[3].endswith(f"{deck.name}:3: rate_per_min: '-0.5' is negative; rates must be >= 0")
    assert lines[4] == f"4 problems; {BAD} was not accepted"


def test_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--json", "check", "--config", BAD)
    data = json.loads(out)
    assert code == 1 and data["ok"] is False
    assert data["problems"][0] == {
        "file": BAD,
        "line": 11,
        "path": "customers[0].trunks[0].rate_plan",
        "message": "'res' is a reseller plan; a trunk needs a customer plan",
    }
    code, out, _ = run(capsys, "check", "--json", "--config", SMALL)
    data = json.loads(out)
    assert code == 0 and data["ok"] is True and data["summary"]["vmgateclient_limit"] == 12
    assert data["plan_lock"] == {"checked": False, "why": "vmgated is not running"}


def test_config_from_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMGATED_CONFIG", SMALL)
    code, out, _ = run(capsys, "check")
    assert code == 0 and out.startswith(f"OK {SMALL}:")


def test_missing_config_is_a_refusal_not_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = str(tmp_path / "nope.yaml")
    code, out, _ = run(capsys, "check", "--config", missing)
    assert code == 1
    assert out.splitlines()[0] == f"{missing}: cannot read the config: No such file or directory"
    code, _, err = run(capsys, "rates", "list", "--config", missing)
    assert code == 1 and err.startswith(f"vmgatectl: error: {missing} cannot be used (1 problem)")


def test_a_ledger_sqlite_cannot_read_is_a_refusal_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "small.yaml"
    text = Path(SMALL).read_text()
    config.write_text(text.replace("decks/", f"{CONFIGS}/decks/")
                      .replace("state_dir: ./var", f"state_dir: {tmp_path}"))
    (tmp_path / "ledger.db").write_bytes(b"not a database, a text file " * 100)
    for command in (["calls"], ["balances"], ["payments"], ["ledger", "verify"]):
        code, _, err = run(capsys, *command, "--config", str(config))
        assert code == 1, command
        assert err == (f"vmgatectl: error: reading the ledger: {tmp_path / 'ledger.db'}: "
                       "file is not a database\n"), command


# -- rate ------------------------------------------------------------------------------------
#
# 442071234567 via acme-1 (plan cust) to gw-01 (plan cli, reseller r-one on plan res), 61 s:
#   customer: 4420 @ 0.0120/min, fee 0.0010, 30/6: charged = 30 + ceil(31/6)·6 = 66 s
#             0.0010 + 0.0120 × 66 / 60 = 0.0010 + 0.0132 = 0.014200
#   client:   4420 @ 0.0070/min, 1/1: charged 61 s; 0.0070 × 61 / 60 = 0.0071166… → 0.007117
#   reseller: 44 @ 0.0010/min, 0/60: charged 120 s; 0.0010 × 2 = 0.002000
#   margin:   0.014200 − 0.007117 − 0.002000 = 0.005083

RATE = ["rate", "442071234567", "--trunk", "acme-1", "--client", "gw-01", "--at", AT]


def test_rate_json_has_the_spec_shape_and_exact_amounts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, *RATE, "--seconds", "61", "--json", "--config", SMALL)
    assert code == 0
    assert json.loads(out) == {
        "number": "442071234567",
        "start": "2026-11-22T10:00:00Z",
        "billsec": 61,
        "legs": {
            "customer": {
                "plan": "cust",
                "prefix": "4420",
                "description": "United Kingdom London",
                "rate_per_min": "0.012000",
                "connection_fee": "0.001000",
                "charged_sec": 66,
                "amount": "0.014200",
            },
            "vmgateclient": {
                "plan": "cli",
                "prefix": "4420",
                "description": "UK London",
                "rate_per_min": "0.007000",
                "connection_fee": "0.000000",
                "charged_sec": 61,
                "amount": "0.007117",
            },
            "reseller": {
                "plan": "res",
                "prefix": "44",
                "description": "UK",
                "rate_per_min": "0.001000",
                "connection_fee": "0.000000",
                "charged_sec": 120,
                "amount": "0.002000",
            },
        },
        "margin": "0.005083",
    }


def test_rate_fractional_seconds_round_up(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *RATE, "--seconds", "60.2", "--json", "--config", SMALL)
    assert code == 0 and json.loads(out)["billsec"] == 61
    assert json.loads(out)["margin"] == "0.005083"


def test_rate_table_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *RATE, "--seconds", "61", "--config", SMALL)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "number 442071234567  start 2026-11-22T10:00:00Z  billsec 61  amounts in USD"
    assert (
        lines[1] == "trunk acme-1 (customer acme) -> client gw-01 (network net-a, reseller r-one)"
    )
    rows = {line.split("  ")[0]: line.split() for line in lines[3:]}
    assert rows["customer charge"][2:4] == ["cust", "4420"]
    assert rows["customer charge"][-2:] == ["66", "0.014200"]
    assert rows["client payout"][-2:] == ["61", "0.007117"]
    assert rows["reseller payout"][-2:] == ["120", "0.002000"]
    assert rows["margin"] == ["margin", "0.005083"]


def test_rate_direct_client_has_no_reseller_leg(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["rate", "442071234567", "--trunk", "acme-1", "--client", "gw-02", "--at", AT]
    code, out, _ = run(capsys, *argv, "--json", "--config", SMALL)
    data = json.loads(out)
    assert code == 0 and data["legs"]["reseller"] is None
    # default 60 s: customer 30 + 5·6 = 60 s → 0.0010 + 0.0120 = 0.013000;
    # client 0.0070 × 60/60 = 0.007000; no reseller → margin 0.006000
    assert data["legs"]["customer"]["amount"] == "0.013000"
    assert data["margin"] == "0.006000"


def test_rate_unrated_leg_shape(capsys: pytest.CaptureFixture[str]) -> None:
    # The client and reseller decks have no row for 33 (France); the customer's catch-all does.
    argv = ["rate", "33123456789", "--trunk", "acme-1", "--client", "gw-01", "--at", AT]
    code, out, _ = run(capsys, *argv, "--json", "--config", SMALL)
    data = json.loads(out)
    assert code == 0
    assert data["legs"]["vmgateclient"] == {"plan": "cli", "unrated": "no_rate"}
    assert data["legs"]["reseller"] == {"plan": "res", "unrated": "no_rate"}
    assert data["legs"]["customer"]["prefix"] == ""
    code, out, _ = run(capsys, *argv, "--config", SMALL)
    assert "unrated: no_rate" in out and "UNRATED" in out


def test_rate_at_picks_the_row_valid_then(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["rate", "442071234567", "--trunk", "acme-1", "--at", "2026-12-05T00:00:00Z"]
    code, out, _ = run(capsys, *argv, "--json", "--config", SMALL)
    assert code == 0
    assert json.loads(out)["legs"]["customer"]["description"] == "United Kingdom London promo"


def test_rate_unknown_trunk_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "rate", "44", "--trunk", "nope", "--config", SMALL)
    assert code == 1 and out == ""
    assert err == "vmgatectl: error: unknown trunk 'nope'; known: acme-1, acme-net\n"


def test_rate_longer_than_max_duration_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *RATE, "--seconds", "1e20", "--config", SMALL)
    assert code == 1 and out == ""
    assert err == (
        "vmgatectl: error: --seconds 100000000000000000000 is longer than calls.max_duration "
        "(10800 s): no call is billed that long\n"
    )
    code, out, _ = run(capsys, *RATE, "--seconds", "10800", "--json", "--config", SMALL)
    assert code == 0 and json.loads(out)["billsec"] == 10800


@pytest.mark.parametrize(
    "argv",
    [
        ["rate", "44", "--trunk", "acme-1", "--seconds", "-1"],
        ["rate", "44", "--trunk", "acme-1", "--seconds", "abc"],
        ["rate", "44", "--trunk", "acme-1", "--at", "yesterday"],
        # SQLite took -1 as "no limit" (an empty listing here) and 10**23 as a traceback.
        ["calls", "--limit", "-1"],
        ["calls", "--limit", "99999999999999999999999"],
        ["payments", "--limit", "1e3"],
        ["rate", "44"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv, "--config", SMALL) if argv else run(capsys)
    assert code == 2 and out == ""
    assert "usage: vmgatectl" in err and "Traceback" not in err


# -- rates -----------------------------------------------------------------------------------


def test_rates_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "rates", "list", "--config", SMALL)
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["NAME", "SCOPE", "CURRENCY", "DESTINATIONS", "ASSIGNED", "SOURCE"]
    assert lines[1].split()[:5] == ["cust", "customer", "USD", "5", "2"]
    assert lines[2].split()[:5] == ["cli", "vmgateclient", "USD", "2", "3"]
    assert lines[3].split()[:5] == ["res", "reseller", "USD", "1", "1"]
    code, out, _ = run(capsys, "rates", "list", "--json", "--config", SMALL)
    first = json.loads(out)[0]
    assert first["name"] == "cust" and first["destinations"] == 5 and first["assignments"] == 2
    assert first["source"].endswith("customer.csv")


def test_rates_show_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    # On 2026-12-05 the London promo (Dec 2026) is in force, the base row is superseded by it,
    # the 2025 row has expired.
    argv = ["rates", "show", "cust", "--at", "2026-12-05T00:00:00Z", "--config", SMALL]
    code, out, _ = run(capsys, *argv, "--json")
    data = json.loads(out)
    assert code == 0 and data["plan"] == "cust" and data["scope"] == "customer"
    status = {(d["code"], d["description"]): d["status"] for d in data["destinations"]}
    assert status == {
        ("", "Rest of world"): "active",
        ("44", "United Kingdom"): "active",
        ("4420", "United Kingdom London old"): "expired",
        ("4420", "United Kingdom London"): "superseded",
        ("4420", "United Kingdom London promo"): "active",
    }
    london = data["destinations"][3]
    assert london["rate_per_min"] == "0.012000" and london["connection_fee"] == "0.001000"
    assert (london["connection_sec"], london["billing_block_sec"]) == (30, 6)
    assert london["valid_since"] == "2026-01-01T00:00:00Z" and london["valid_until"] is None
    code, out, _ = run(capsys, *argv[:-2], "--at", AT, "--config", SMALL)
    promo = next(line for line in out.splitlines() if "promo" in line)
    assert promo.split()[-1] == "future"
    assert out.splitlines()[1].split()[:4] == ["PREFIX", "DESCRIPTION", "RATE/MIN", "FEE"]


def test_rates_show_unknown_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "rates", "show", "nope", "--config", SMALL)
    assert code == 1
    assert err == "vmgatectl: error: unknown rate plan 'nope'; known: cli, cust, res\n"


def test_render_table_aligns_numbers_right_and_text_left() -> None:
    table = render_table(
        ["NAME", "N", "CODE"], [["a", 5, "44"], ["bbb", 10, "4420"]], left=("CODE",)
    )
    assert table.splitlines() == [
        "NAME   N  CODE",
        "a      5  44",
        "bbb   10  4420",
    ]


def test_render_table_shows_control_characters_as_text() -> None:
    # A caller from the wire ("\x1b[2J" clears a terminal) must not reach the terminal raw.
    table = render_table(["caller", "n"], [["\x1b[2Jevil\nline", 1], ["plain", 22]])
    assert table.splitlines() == [
        "caller              n",
        "\\x1b[2Jevil\\nline   1",
        "plain              22",
    ]
    assert "\x1b" not in table
