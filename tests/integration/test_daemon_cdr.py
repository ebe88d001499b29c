"""SPEC §3.2: CDR lines over UDP and `vmgatectl cdr import`, each billed exactly once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sipcalls import BASE, Env, S, harness, make_env, send, wait_for

from rating.units import format_time


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = make_env(tmp_path, cdr=True)
    yield e
    e.daemon.stop()


def cdr(call_id: str, offset_s: int = 0, talk_s: int = 60, **extra: object) -> dict[str, object]:
    t = BASE + offset_s * S
    line: dict[str, object] = {
        "call_id": call_id, "trunk": "acme-1", "client": "gw-01", "caller": "15551230000",
        "callee": "12025550100", "start": format_time(t), "answer": format_time(t + 2 * S),
        "end": format_time(t + (2 + talk_s) * S), "sip_code": 200,
    }
    line.update(extra)
    return line


def test_cdr_datagram_sent_twice_is_billed_once(env: Env) -> None:
    assert env.cdr_port is not None
    by_name = json.dumps(cdr("cdr-1")).encode()
    t = BASE + 10 * S
    by_address = json.dumps({  # epoch seconds with a fraction; parties by address
        "call_id": "cdr-2", "src": "127.0.0.11:5060", "dst": "127.0.0.21:5060",
        "caller": "1555", "callee": "12025550100", "start": f"{t // S}.250000",
        "answer": f"{t // S + 1}.5", "end": f"{t // S + 31}.75",
    }).encode()
    send(env.cdr_port, [by_name, by_name, by_address, by_address, b"{not json"])
    calls = env.wait_calls(2)
    by_id = {c["call_id"]: c for c in calls}
    assert by_id["cdr-1"]["billsec"] == 60
    assert by_id["cdr-1"]["legs"]["customer"]["amount"] == "0.005500"
    assert (by_id["cdr-2"]["trunk"], by_id["cdr-2"]["client"]) == ("acme-1", "gw-01")
    assert by_id["cdr-2"]["billsec"] == 31  # ceil(30.25)
    assert by_id["cdr-2"]["answer"] == format_time(t + 1_500_000)
    wait_for(lambda: harness.metric_value(env.scrape(), "vmgated_packets_total", input="cdr",
                                          result="ok") is not None)
    text = env.scrape()
    assert harness.metric_value(text, "vmgated_packets_total", input="cdr", result="ok") == "4"
    assert harness.metric_value(text, "vmgated_packets_total", input="cdr",
                                result="bad_json") == "1"
    assert harness.metric_value(text, "vmgated_calls_total", customer="acme", client="gw-01",
                                disposition="answered") == "2"


def test_cdr_import_bills_good_lines_reports_bad_ones_and_reimport_bills_nothing(
    env: Env, tmp_path: Path
) -> None:
    assert env.cdr_port is not None
    send(env.cdr_port, [json.dumps(cdr("live-then-file", 100)).encode()])
    env.wait_calls(1)
    lines = [
        json.dumps(cdr("imp-1", 0)),
        "{broken",
        json.dumps(cdr("imp-2", 20, talk_s=61)),
        "",
        json.dumps({k: v for k, v in cdr("imp-3").items() if k != "call_id"}),
        json.dumps(cdr("live-then-file", 100)),
        json.dumps(cdr("imp-4", 40, sip_code=486, answer=None)),
        json.dumps(cdr("imp-5", 0, colour="blue")),
        json.dumps(cdr("imp-1", 0, talk_s=59)),  # same call, other times: refused, not billed
    ]
    path = tmp_path / "cdrs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = env.ctl("cdr", "import", str(path), check=False)
    assert out.returncode == 1  # some lines were refused
    assert "billed 3, already billed 1, errors 4" in out.stdout
    errors = out.stderr.strip().splitlines()
    assert errors[0].startswith(f"{path}:2: not a JSON object"), errors
    assert errors[1] == f"{path}:5: call_id: required"
    assert errors[2].startswith(f"{path}:8: unknown fields ['colour']")
    assert errors[3] == (f"{path}:9: call_id: 'imp-1' is already billed with different "
                         "content (times or parties); not billed again")
    assert "Traceback" not in out.stderr
    calls = {c["call_id"]: c for c in env.calls()}
    assert set(calls) == {"live-then-file", "imp-1", "imp-2", "imp-4"}
    assert calls["imp-2"]["billsec"] == 61
    assert calls["imp-2"]["legs"]["customer"]["amount"] == "0.011000"  # 2 blocks of 60 s
    assert (calls["imp-4"]["disposition"], calls["imp-4"]["sip_code"]) == ("busy", 486)
    assert calls["imp-4"]["legs"]["customer"]["amount"] == "0.000000"
    again = json.loads(env.ctl("cdr", "import", str(path), "--json", check=False).stdout)
    assert (again["billed"], again["already_billed"], len(again["errors"])) == (0, 4, 4)
    assert len(env.calls()) == 4


def test_cdr_import_refuses_a_line_that_is_not_utf8_and_bills_the_rest(
    env: Env, tmp_path: Path
) -> None:
    # Read strictly per line, as the UDP listener reads a datagram; it used to be billed with
    # U+FFFD in place of the bad byte.
    latin1 = json.dumps(cdr("enc-1", caller="Köln"), ensure_ascii=False).encode("latin-1")
    good = json.dumps(cdr("enc-2", 10)).encode()
    path = tmp_path / "cdrs.jsonl"
    path.write_bytes(latin1 + b"\n" + good + b"\n")
    out = env.ctl("cdr", "import", str(path), check=False)
    assert out.returncode == 1
    assert "billed 1, already billed 0, errors 1" in out.stdout
    column = latin1.index(b"\xf6") + 1
    assert out.stderr.strip() == (f"{path}:1: not UTF-8 text (byte 0xf6 at column {column}); "
                                  "CDR lines are UTF-8 JSON")
    assert [c["call_id"] for c in env.calls()] == ["enc-2"]
