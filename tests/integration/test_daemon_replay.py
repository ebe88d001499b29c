"""SPEC §8 `vmgatectl replay`: recorded Kamailio captures bill exactly like the live run, once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sipcalls import Env, make_env

from rating.units import format_time
from vmgated import control
from vmgated.commands import REPLAY_IDLE_S, ReplaySession, reap_replays

DATA = Path(__file__).resolve().parents[1] / "data"
HEP_FILE = DATA / "kamailio_answered.hep"
PCAP_FILE = DATA / "kamailio_answered.pcap"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = make_env(tmp_path)
    yield e
    e.daemon.stop()


def replay(env: Env, path: Path) -> dict[str, int]:
    result: dict[str, int] = json.loads(env.ctl("replay", str(path), "--json").stdout)
    return result


def check_answered_calls(env: Env) -> None:
    calls = {c["call_id"]: c for c in env.calls()}
    assert sorted(calls) == [f"{i}-10086@127.0.0.11" for i in range(1, 6)]
    first = calls["1-10086@127.0.0.11"]  # times from tests/data/README.md
    assert first["start"] == format_time(1795379849352033)
    assert first["answer"] == format_time(1795379849354913)
    assert first["end"] == format_time(1795379851858549)
    assert first["billsec"] == 3
    for c in calls.values():
        assert (c["trunk"], c["client"], c["reseller"]) == ("acme-1", "gw-01", "r-alpha")
        assert c["disposition"] == "answered" and c["sip_code"] == 200
        # sipp dials `service`: no digits to rate, recorded unrated rather than charged 0.
        assert c["legs"]["customer"] == {"plan": "retail-a", "unrated": "no_number"}


def test_replay_hep_file_bills_each_call_once_and_again_bills_nothing(env: Env) -> None:
    assert replay(env, HEP_FILE) == {"datagrams": 60, "billed": 5, "already_billed": 0,
                                    "dropped": {}}
    check_answered_calls(env)
    before = env.ctl_json("balances")
    assert replay(env, HEP_FILE) == {"datagrams": 60, "billed": 0, "already_billed": 5,
                                    "dropped": {}}
    assert replay(env, PCAP_FILE) == {"datagrams": 60, "billed": 0, "already_billed": 5,
                                    "dropped": {}}
    assert len(env.calls()) == 5
    assert env.ctl_json("balances") == before
    human = env.ctl("replay", str(HEP_FILE)).stdout
    assert human.strip() == "replayed 60 datagrams: billed 0 calls, 5 already billed"


def test_replay_pcap_bills_like_the_hep_file(env: Env) -> None:
    assert replay(env, PCAP_FILE) == {"datagrams": 60, "billed": 5, "already_billed": 0,
                                    "dropped": {}}
    check_answered_calls(env)
    assert replay(env, HEP_FILE)["billed"] == 0
    assert env.ctl("ledger", "verify").returncode == 0


def test_replay_of_a_missing_or_garbage_file_is_refused_cleanly(env: Env, tmp_path: Path) -> None:
    out = env.ctl("replay", str(tmp_path / "nope.pcap"), check=False)
    assert out.returncode == 1 and "nope.pcap" in out.stderr and "Traceback" not in out.stderr
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00garbage" * 10)
    out = env.ctl("replay", str(junk), check=False)
    assert out.returncode == 1 and "junk.bin" in out.stderr and "Traceback" not in out.stderr


def test_a_chunk_for_an_unknown_or_ended_session_gets_a_clear_error(env: Env) -> None:
    sock = env.dir / "var" / "control.sock"
    sid = control.call(sock, "replay_begin", {})["session"]
    assert control.call(sock, "replay_end", {"session": sid})["billed"] == 0
    for cmd in ("replay_chunk", "replay_end"):
        with pytest.raises(control.ControlError, match=f"no replay session '{sid}'"):
            control.call(sock, cmd, {"session": sid, "items": []})
    assert env.ctl_json("status")["active_calls"] == 0  # and the daemon serves on


def test_idle_replay_sessions_are_reaped_and_live_ones_kept() -> None:
    live = ReplaySession(pipeline=None, touched=1000.0)  # type: ignore[arg-type]
    idle = ReplaySession(pipeline=None, touched=1000.0 - REPLAY_IDLE_S)  # type: ignore[arg-type]
    sessions = {"live": live, "idle": idle}
    assert reap_replays(sessions, now=1000.0) == ["idle"]
    assert sessions == {"live": live}
    assert reap_replays(sessions, now=1000.0 + REPLAY_IDLE_S - 1) == []


def test_a_capture_of_megabytes_is_replayed_in_requests_the_daemon_takes(
    env: Env, tmp_path: Path
) -> None:
    # 2,400 datagrams, 1.25 MB: the first 2,000-datagram request was 2.2 MB, over the control
    # socket's 1 MiB line limit; the daemon refused it, and vmgatectl printed nothing and
    # exited 0 (the broken pipe passed for a closed stdout).
    big = tmp_path / "big.hep"
    big.write_bytes(HEP_FILE.read_bytes() * 40)
    assert replay(env, big) == {"datagrams": 2400, "billed": 5, "already_billed": 0,
                                "dropped": {}}
    check_answered_calls(env)


def test_a_request_over_the_line_limit_is_an_error_that_says_so(env: Env) -> None:
    # Refused with words whether the daemon's answer comes before the client has sent it all
    # (a broken pipe on our side) or after.
    with pytest.raises(control.ControlError, match=r"request too long .* nothing was done"):
        control.call(env.dir / "var" / "control.sock", "status",
                     {"pad": "x" * (control.REQUEST_LIMIT + 10)})


def test_replay_says_what_it_dropped_and_keeps_it_out_of_the_live_counters(
    env: Env, tmp_path: Path
) -> None:
    from sip import hep

    src, dst = ("127.0.0.11", 5060), ("127.0.0.1", 5060)
    bad = [hep.encode(b"not a SIP message at all", src, dst, 1795379849000000),
           hep.encode(b"\x81\xc8\x00\x0c" + b"\x00" * 48, src, dst, 1795379849000000,
                      proto_type=5)] * 2
    path = tmp_path / "mixed.hep"
    path.write_bytes(HEP_FILE.read_bytes() + b"".join(bad))
    assert replay(env, path) == {"datagrams": 64, "billed": 5, "already_billed": 0,
                                 "dropped": {"not_sip": 2, "sip_bad_start_line": 2}}
    human = env.ctl("replay", str(path))
    assert human.stderr.strip() == ("dropped 4 datagrams that are not billable SIP "
                                    "(2 not_sip, 2 sip_bad_start_line)")
    assert "sip_bad_start_line" not in env.scrape()  # the live feed's counters are its own
