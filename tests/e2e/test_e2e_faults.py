"""Faults under real traffic (SPEC §3.3, §6): garbage on the HEP port and `kill -9` mid-call.

Same shape as test_e2e_billing: sipp → Kamailio → sipp UAS, HEP through a tee (the harness's
own copy of every datagram) to a live vmgated. Expected times come from the tee's capture.
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from collections.abc import Callable

import pytest
from daemon import Vmgated, metric_value, packet_counts, parse_rfc3339_us
from stack import CallTimes, HepTee, SipStack, SipStackFactory, call_times, wait_call_times

from sip import hep

pytestmark = pytest.mark.e2e
VmgatedFactory = Callable[..., Vmgated]  # conftest's vmgated_factory fixture

NUMBER = "442071234567"
CAPTURE_ID = 2001


def assert_billed_once(
    daemon: Vmgated, times: dict[str, CallTimes]
) -> dict[str, dict[str, object]]:
    """Every captured call listed once, with the capture's answer, end and billsec."""
    calls = daemon.calls()  # fails on a Call-ID listed twice
    assert sorted(calls) == sorted(times), "calls listed ≠ calls captured"
    for cid, want in times.items():
        call = calls[cid]
        assert want.answer is not None and want.end is not None, want
        assert call["disposition"] == "answered", call
        assert parse_rfc3339_us(str(call["start"])) == want.start, (call, want)
        assert parse_rfc3339_us(str(call["answer"])) == want.answer, (call, want)
        assert parse_rfc3339_us(str(call["end"])) == want.end, (call, want)
        assert call["billsec"] == want.billsec, (call, want)
        assert (call["trunk"], call["client"], call["reseller"]) == ("acme-1", "gw-01", "r-alpha")
        legs = call["legs"]
        assert isinstance(legs, dict) and legs["customer"]["amount"] == "0.006500", call
    rows = daemon.ledger_query("SELECT call_id, count(*) FROM calls GROUP BY call_id")
    assert sorted(rows) == sorted((cid, 1) for cid in times), "a call was billed twice"
    return calls


# -- garbage interleaved with calls ------------------------------------------------------------

def garbage(rnd: random.Random) -> list[tuple[str, bytes]]:
    """One round of bad datagrams, each with the drop reason vmgated must count it under."""
    now = time.time_ns() // 1000
    src, dst = ("127.0.0.11", 5060), ("127.0.0.1", 5060)
    sip = b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nCall-ID: g\r\nFrom: <sip:a@b>;tag=1\r\n" \
          b"To: <sip:x@127.0.0.1>\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    valid = hep.encode(sip, src, dst, now, capture_id=CAPTURE_ID)
    # Payload chunk (the last one) claims 40 bytes more than the datagram has left.
    pos = valid.rindex(b"\x00\x00\x00\x0f")
    length = int.from_bytes(valid[pos + 4 : pos + 6], "big") + 40
    broken = valid[: pos + 4] + length.to_bytes(2, "big") + valid[pos + 6 :]
    return [
        ("bad_magic", b"\xff" + rnd.randbytes(rnd.randrange(20, 400))),  # random bytes
        ("truncated", valid[: rnd.randrange(40, len(valid) - 1)]),  # cut HEP
        ("bad_chunk", broken),
        # Well-formed HEP whose payload is not SIP at all (type says SIP).
        ("sip_bad_start_line", hep.encode(rnd.randbytes(60).hex().encode(), src, dst, now,
                                          capture_id=CAPTURE_ID)),
        # Well-formed HEP carrying RTCP (protocol type 5): not billed, counted.
        ("not_sip", hep.encode(b"\x81\xc8\x00\x0c" + rnd.randbytes(48), src, dst, now,
                               capture_id=CAPTURE_ID, proto_type=5)),
    ]


def test_garbage_between_real_calls_is_counted_and_loses_no_call(
    vmgated_factory: VmgatedFactory, sip_stack_factory: SipStackFactory
) -> None:
    daemon = vmgated_factory(capture_id=CAPTURE_ID)
    with HepTee(daemon.hep_address) as tee:
        stack = sip_stack_factory(hep_to=tee.address, capture_id=CAPTURE_ID)
        rnd = random.Random(20261122)
        sent: Counter[str] = Counter()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender, \
                stack.uac_process(calls=10, rate=10, duration_ms=1500, service=NUMBER) as uac:
            # ~3 s of garbage from before the first answer until after the last BYE started.
            for _ in range(30):
                for reason, data in garbage(rnd):
                    sender.sendto(data, daemon.hep_address)
                    sent[reason] += 1
                time.sleep(0.1)
            result = uac.wait(30)
        assert result.ok and result.successful == 10, result
        times = wait_call_times(tee, 10)
    forwarded = len(tee.packets)  # the tee is closed: nothing more reaches the daemon
    assert len(times) == 10
    assert daemon.wait_calls(10) == 10, daemon.logs()
    assert daemon.alive
    assert_billed_once(daemon, times)

    deadline = time.monotonic() + 10
    counts = packet_counts(daemon.metrics())
    while counts.get(("hep", "ok"), 0) < forwarded and time.monotonic() < deadline:
        time.sleep(0.1)
        counts = packet_counts(daemon.metrics())
    # Every datagram is accounted for: Kamailio's are ok, each garbage kind under its reason.
    assert counts == {("hep", "ok"): forwarded,
                      **{("hep", reason): n for reason, n in sent.items()}}, counts
    assert sum(sent.values()) == 150


# -- kill -9 while calls are up ----------------------------------------------------------------

def answered(tee: HepTee) -> int:
    """How many captured calls have their 200 to the INVITE."""
    return sum(1 for t in call_times(p.data for p in tee.packets).values()
               if t.answer is not None)


# 1 s after the last answer the dialogs are usually in the once-a-second snapshot; 0.05 s after
# it, the last answers are usually only in the journal of raw datagrams (vmgated/journal.py).
@pytest.mark.parametrize("kill_after_s", [1.0, 0.05], ids=["snapshot", "journal"])
def test_kill9_mid_traffic_then_restart_bills_every_call_once(
    vmgated_factory: VmgatedFactory, sip_stack_factory: SipStackFactory, kill_after_s: float
) -> None:
    daemon = vmgated_factory(capture_id=CAPTURE_ID)
    with HepTee(daemon.hep_address) as tee:
        stack: SipStack = sip_stack_factory(hep_to=tee.address, capture_id=CAPTURE_ID)
        # 10 calls at 20/s, all answered within ~0.5 s; each stays up 6 s after its answer.
        with stack.uac_process(calls=10, rate=20, duration_ms=6000, service=NUMBER) as uac:
            deadline = time.monotonic() + 10
            while answered(tee) < 10:
                assert time.monotonic() < deadline, "sipp's calls were not all answered"
                time.sleep(0.05)
            time.sleep(kill_after_s)
            up = metric_value(daemon.metrics(), "vmgated_active_calls", trunk="acme-1",
                              client="gw-01")
            killed_us = time.time_ns() // 1000
            daemon.kill9()
            daemon.start()  # same config, same state dir
            ready_us = time.time_ns() // 1000
            result = uac.wait(30)
        assert result.ok and result.successful == 10, result
        assert up == "10", "the calls were not all up in vmgated when it was killed"
        times = wait_call_times(tee, 10)
        # The premise: the daemon was down between answers and BYEs, so nothing it needed was
        # sent while it was away (a datagram sent then is lost on any UDP receiver).
        lost = [p for p in tee.packets if killed_us <= p.received_us <= ready_us]
        assert not lost, f"{len(lost)} datagrams arrived while vmgated was down " \
                         f"({(ready_us - killed_us) / 1e6:.1f} s restart)"
        assert len(times) == 10
        assert daemon.wait_calls(10) == 10, daemon.logs()
        assert_billed_once(daemon, times)
        verify = daemon.ctl_json("ledger", "verify")
        assert verify["ok"] is True, verify

        # After the restart the daemon bills new traffic as usual.
        tee.clear()
        result = stack.call(calls=3, rate=10, duration_ms=1500, service=NUMBER)
        assert result.ok and result.successful == 3, result
        second = wait_call_times(tee, 3)
    assert len(second) == 3
    assert daemon.wait_calls(13) == 13, daemon.logs()
    calls = daemon.calls()
    assert len(calls) == 13
    for cid, want in second.items():
        assert calls[cid]["billsec"] == want.billsec == 2
        assert parse_rfc3339_us(str(calls[cid]["answer"])) == want.answer
    assert daemon.ctl_json("ledger", "verify")["ok"] is True
    assert daemon.alive


def test_kill9_right_after_the_byes_bills_none_twice(
    vmgated_factory: VmgatedFactory, sip_stack_factory: SipStackFactory
) -> None:
    # Killed as the last calls end: some are committed, some may be only in the journal or in
    # the snapshot's pending list. The restart re-reads all of it; the ledger's call keys make
    # the second billing of a committed call a no-op.
    daemon = vmgated_factory(capture_id=CAPTURE_ID)
    with HepTee(daemon.hep_address) as tee:
        stack = sip_stack_factory(hep_to=tee.address, capture_id=CAPTURE_ID)
        result = stack.call(calls=10, rate=20, duration_ms=1500, service=NUMBER)
        times = wait_call_times(tee, 10, quiet=0.0)
        daemon.kill9()
        daemon.start()
    assert result.ok and result.successful == 10, result
    assert daemon.wait_calls(10) == 10, daemon.logs()
    time.sleep(1.5)  # a second billing, if any, would land within the restart's first ticks
    assert_billed_once(daemon, times)
    assert daemon.ctl_json("ledger", "verify")["ok"] is True
