"""HEPv1 (siptrace's default `hep_version 1`) carries no capture time: the daemon stamps the
receive time once, before journalling, so the live bill and a restart's replay agree."""

from __future__ import annotations

import time
from pathlib import Path

from sipcalls import Call, make_env, send, setup_messages, teardown_messages

from rating.units import parse_time
from sip import hep


def v1(messages: list[tuple[bytes, tuple[str, int], tuple[str, int], int]]) -> list[bytes]:
    return [hep.encode(sip, src, dst, ts, version=1) for sip, src, dst, ts in messages]


def test_a_hepv1_call_is_billed_at_receive_times_and_the_same_after_a_kill(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path)
    try:
        call = Call("hep-v1")  # its own capture times are ignored: v1 cannot carry them
        before = time.time_ns() // 1000
        send(env.hep_port, v1(setup_messages(call)))
        time.sleep(1.3)
        send(env.hep_port, v1(teardown_messages(call)))
        (billed,) = env.wait_calls(1)
        after = time.time_ns() // 1000
        assert billed["call_id"] == "hep-v1"
        start, end = parse_time(billed["start"]), parse_time(billed["end"])
        assert before <= start <= end <= after, billed  # receive times, not 1970
        answer = parse_time(billed["answer"])
        assert billed["disposition"] == "answered"
        # 1.3 s apart on the sender's clock; the receive times may shift by the loop's delay.
        assert billed["billsec"] == -(-(end - answer) // 1_000_000) and 1 <= billed["billsec"] <= 3
        assert billed["legs"]["customer"]["amount"] != "0.000000"

        # kill -9 and restart: the journal replays the stamped datagrams; nothing changes.
        assert env.daemon.proc is not None
        env.daemon.proc.kill()
        env.daemon.proc.wait()
        env.restart()
        again = [c for c in env.calls() if c["call_id"] == "hep-v1"]
        assert again == [billed]
        assert env.ctl_json("ledger", "verify")["ok"] is True
    finally:
        env.daemon.stop()
