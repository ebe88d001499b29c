"""Issue 5 part 2: SIGHUP / `vmgatectl reload` swap config and decks atomically, or not at all."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sipcalls import BASE, Call, Env, S, harness, make_env, send, setup_messages, to_hep, wait_for

from rating.units import format_time
from vmgated.heap import THRESHOLDS
from vmgated.metrics import DROP_SOURCE

HEADER = ("code,description,valid_since,valid_until,rate_per_min,connection_fee,"
          "connection_sec,billing_block_sec\n")
SINCE = "2026-01-01T00:00:00Z"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = make_env(tmp_path)
    yield e
    e.daemon.stop()


def retail(rows: list[str]) -> str:
    return HEADER + "".join(r + "\n" for r in rows)


BASE_ROWS = [f",Rest of world,{SINCE},,0.9000,,60,60", f"1,USA/Canada,{SINCE},,0.0058,,60,60",
             f"1202,USA Washington DC,{SINCE},,0.0055,,60,60"]


def customer_leg(env: Env, call_id: str) -> dict[str, str]:
    found = [c for c in env.calls("--limit", "1000") if c["call_id"] == call_id]
    assert len(found) == 1, found
    leg: dict[str, str] = found[0]["legs"]["customer"]
    return leg


def last_reload(env: Env) -> str:
    return str(env.ctl_json("status")["last_reload"])


def call_at(call_id: str, offset_s: int) -> Call:
    t = BASE + offset_s * S
    return Call(call_id, start=t, answer=t + 2 * S, end=t + 62 * S)


def test_sighup_with_a_changed_deck_prices_new_calls_at_the_new_rate(env: Env) -> None:
    env.deck("retail-a.csv").write_text(retail([*BASE_ROWS[:2],
        f"1202,USA Washington DC,{SINCE},,0.0120,,60,60"]))
    assert env.daemon.proc is not None
    env.daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: last_reload(env) != "never")
    env.send(call_at("after-hup", 0))
    env.wait_calls(1)
    leg = customer_leg(env, "after-hup")
    assert (leg["rate_per_min"], leg["amount"]) == ("0.012000", "0.012000")
    logs = env.daemon.logs()
    assert "reloaded" in logs
    # The new decks are frozen out of the cycle collector's walks, as at start (vmgated.heap).
    assert re.search(r"reloaded \S+ \(\d+ objects frozen\)", logs), logs[-2000:]
    assert re.search(r"heap: \d+ long-lived objects .* frozen", logs)
    # ... and the collector runs with the daemon's thresholds, not CPython's defaults.
    assert f"collector thresholds {THRESHOLDS}" in logs


def test_reload_accepts_a_later_row_on_a_plan_with_history(env: Env) -> None:
    env.send(call_at("before", 0))
    env.wait_calls(1)
    later = format_time(BASE + 100 * S)
    deck = env.deck("retail-a.csv")  # every existing row kept: the plan has history
    deck.write_text(deck.read_text()
                    + f"1202,USA Washington DC (new),{later},,0.0110,,60,60\n")
    out = env.ctl("reload")
    assert out.stdout.strip() == "reloaded"
    env.send(call_at("after", 200), call_at("late-start-old-row", 50))
    env.wait_calls(3)
    assert customer_leg(env, "before")["amount"] == "0.005500"
    assert customer_leg(env, "after")["amount"] == "0.011000"
    assert customer_leg(env, "after")["description"] == "USA Washington DC (new)"
    # A call that started before the new row's valid_since keeps the row valid at its start.
    assert customer_leg(env, "late-start-old-row")["amount"] == "0.005500"


def test_plan_lock_refuses_editing_a_row_with_history(env: Env) -> None:
    env.send(call_at("history", 0))
    env.wait_calls(1)
    deck = env.deck("retail-a.csv")
    lines = deck.read_text().splitlines(keepends=True)
    (at,) = [i for i, text in enumerate(lines) if text.startswith("1202,")]
    lines[at] = lines[at].replace(",0.0055,", ",0.0999,")
    deck.write_text("".join(lines))
    out = env.ctl("reload", check=False)
    assert out.returncode == 1
    assert "plan lock" in out.stderr, out.stderr
    located = f"retail-a.csv:{at + 1}: rate_per_min: plan 'retail-a': code '1202'"
    assert located in out.stderr, out.stderr
    assert "rate_per_min 0.0055 -> 0.0999" in out.stderr
    assert out.stderr.count("plan 'retail-a'") == 1, out.stderr  # that row, nothing else
    assert located in env.daemon.logs()
    env.send(call_at("still-old", 100))
    env.wait_calls(2)
    assert customer_leg(env, "still-old")["amount"] == "0.005500"


def test_check_asks_the_running_daemon_about_the_plan_lock(env: Env) -> None:
    out = env.ctl("check")
    assert "plan lock: OK (asked the running daemon" in out.stdout, out.stdout
    env.send(call_at("history", 0))
    env.wait_calls(1)
    deck = env.deck("retail-a.csv")
    deck.write_text(deck.read_text().replace(",0.0055,", ",0.0999,"))
    # The file alone is a valid config; only the daemon knows the plan has history.
    out = env.ctl("check", check=False)
    assert out.returncode == 1, out.stdout
    assert "rate_per_min 0.0055 -> 0.0999" in out.stdout
    assert "plan lock: a reload would be refused (1 problem)" in out.stdout
    js = env.ctl("--json", "check", check=False)
    data = json.loads(js.stdout)
    assert js.returncode == 1 and data["ok"] is False and data["plan_lock"]["checked"] is True
    assert len(data["plan_lock"]["problems"]) == 1
    # check changed nothing: the running plan still prices at the old rate.
    env.send(call_at("still-old", 100))
    env.wait_calls(2)
    assert customer_leg(env, "still-old")["amount"] == "0.005500"


def test_bad_deck_keeps_running_config_and_names_file_line_field(env: Env) -> None:
    env.deck("retail-a.csv").write_text(retail([*BASE_ROWS[:2],
        f"1202,USA Washington DC,{SINCE},,-0.0100,,60,60"]))
    for how in ("ctl", "sighup"):
        if how == "ctl":
            out = env.ctl("reload", check=False)
            assert out.returncode == 1
            assert "Traceback" not in out.stderr
            assert "retail-a.csv:4: rate_per_min" in out.stderr, out.stderr
        else:
            assert env.daemon.proc is not None
            env.daemon.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: env.daemon.logs().count("retail-a.csv:4: rate_per_min") >= 2)
    assert "retail-a.csv:4: rate_per_min" in env.daemon.logs()
    assert last_reload(env) == "never"
    env.send(call_at("old-rates", 0))
    env.wait_calls(1)
    assert customer_leg(env, "old-rates")["amount"] == "0.005500"


def test_bad_config_keeps_running_config_and_names_line_and_field(env: Env) -> None:
    text = env.config.read_text()
    env.config.write_text(text.replace("calls: {max_duration: 3h}",
                                       "calls: {max_duration: 3h, max_durration: 2h}"))
    out = env.ctl("reload", check=False)
    assert out.returncode == 1
    line = next(i for i, s in enumerate(env.config.read_text().splitlines(), 1)
                if "max_durration" in s)
    assert f"vmgated.yaml:{line}: calls.max_durration" in out.stderr, out.stderr
    assert f"vmgated.yaml:{line}: calls.max_durration" in env.daemon.logs()
    env.config.write_text(text)
    env.send(call_at("fine", 0))
    env.wait_calls(1)


def test_reload_applies_a_changed_source_allow_list_to_open_sockets(env: Env) -> None:
    env.send(call_at("allowed", 0))
    env.wait_calls(1)
    text = env.config.read_text()
    elsewhere = re.sub(r"allowed_sources: .*", "allowed_sources: [10.0.0.0/8]", text)
    assert elsewhere != text
    env.config.write_text(elsewhere)
    assert env.ctl("reload").stdout.strip() == "reloaded"
    env.send(call_at("refused", 100))
    wait_for(lambda: harness.metric_value(env.scrape(), "vmgated_packets_total", input="hep",
                                          result=DROP_SOURCE) == "12")
    assert len(env.calls()) == 1
    env.config.write_text(text)
    assert env.ctl("reload").stdout.strip() == "reloaded"
    env.send(call_at("allowed-again", 200))
    env.wait_calls(2)


def test_reload_applies_a_shorter_max_duration_to_calls_in_progress(env: Env) -> None:
    c = Call("long", answer=BASE + 2 * S, end=None)
    send(env.hep_port, to_hep(setup_messages(c)))
    wait_for(lambda: env.ctl_json("status")["active_calls"] == 1)
    time.sleep(3.5)  # up for longer than the 3 s it will be allowed, on its own clock too
    assert env.ctl_json("status")["active_calls"] == 1  # 3h: still up
    text = env.config.read_text()
    shorter = text.replace("calls: {max_duration: 3h}", "calls: {max_duration: 3s}")
    assert shorter != text
    env.config.write_text(shorter)
    assert env.ctl("reload").stdout.strip() == "reloaded"
    (closed,) = env.wait_calls(1)
    assert (closed["flags"], closed["billsec"]) == (["max_duration"], 3)


def test_reloads_asked_at_once_run_one_after_the_other(env: Env) -> None:
    env.deck("retail-a.csv").write_text(retail([*BASE_ROWS[:2],
        f"1202,USA Washington DC,{SINCE},,0.0120,,60,60"]))
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda _: env.ctl("reload", check=False), range(3)))
    assert [o.stdout.strip() for o in outs] == ["reloaded"] * 3, [o.stderr for o in outs]
    assert env.daemon.logs().count("objects frozen)") == 3
    env.send(call_at("after-three", 0))
    env.wait_calls(1)
    assert customer_leg(env, "after-three")["amount"] == "0.012000"


def test_a_sighup_while_starting_is_a_reload_once_ready_not_a_kill(tmp_path: Path) -> None:
    # SIGHUP's default action ends a process, and a start takes seconds with big decks or a
    # journal to replay: a reload asked then (systemctl reload, a deck-publishing script) used
    # to kill the daemon before it was ready.
    from bench.gen_deck import make_deck

    e = make_env(tmp_path, start=False)
    e.deck("retail-a.csv").write_text(make_deck(200_000))  # ~2-3 s to load and index
    log = tmp_path / "early-hup.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vmgated.main", "--config", str(e.config)],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.8)  # vmgated.main has installed its handler; the decks are loading
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: proc.poll() is not None or e.ctl("status", check=False).returncode == 0,
                 timeout=60)
        assert proc.poll() is None, log.read_text()
        wait_for(lambda: "reloaded " in log.read_text(), timeout=60)
        # Proof that the signal came before the daemon was ready (else nothing was tested).
        assert "a reload was asked while starting: reloading now" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_a_changed_port_waits_for_a_restart_and_the_reload_says_so(env: Env) -> None:
    # Before: the new port went into the running config unopened, and `status` showed it.
    text = env.config.read_text()
    hep = f"{{address: 127.0.0.1, port: {env.hep_port}}}"
    assert hep in text
    moved = text.replace(hep, f"{{address: 127.0.0.1, port: {env.hep_port + 1}}}")
    env.config.write_text(moved)
    out = env.ctl("reload").stdout
    assert out == ("reloaded; these take effect at the next restart:\n"
                   f"listen.hep: running 127.0.0.1:{env.hep_port}, the file says "
                   f"127.0.0.1:{env.hep_port + 1}\n"), out
    assert env.ctl_json("reload") == {"result": "reloaded", "restart_needed": [
        f"listen.hep: running 127.0.0.1:{env.hep_port}, the file says "
        f"127.0.0.1:{env.hep_port + 1}"]}
    listeners = next(line for line in env.ctl("status").stdout.splitlines()
                     if line.startswith("listeners"))
    assert f"hep udp 127.0.0.1:{env.hep_port}" in listeners
    assert str(env.hep_port + 1) not in listeners
    env.send(call_at("old-port", 0))  # still read where it always was
    env.wait_calls(1)
    env.config.write_text(text)
    assert env.ctl_json("reload") == {"result": "reloaded", "restart_needed": []}
