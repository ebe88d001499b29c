"""Fuzz the tracker: whatever parses is fed; the tracker never raises and bills a call once."""

from harness import run

from sip import message
from sip.dialog import Tracker

TRACKER = Tracker(max_duration_us=60 * 10**6, setup_timeout_us=20 * 10**6)
SEEN: set[str] = set()  # uids already billed
CLOCK = [1_795_379_849_000_000]
ADDRS = [("127.0.0.11", 5060), ("127.0.0.1", 5060), ("127.0.0.21", 5060)]


def target(data: bytes) -> None:
    try:
        msg = message.parse(data)
    except message.SipError:
        return
    CLOCK[0] += 1000 + (data[0] if data else 0) * 10_000
    src = ADDRS[len(data) % 3]
    dst = ADDRS[(len(data) + 1) % 3]
    out = TRACKER.feed(msg, CLOCK[0], src, dst, len(data) % 2 or None, None)
    out += TRACKER.expire(CLOCK[0])
    for r in out:
        assert r.uid not in SEEN, r  # billed twice
        assert r.start <= r.end
        assert r.answer is None or r.start <= r.answer
        SEEN.add(r.uid)
    if len(SEEN) > 10_000:
        SEEN.clear()
    state = TRACKER.export_state()
    assert len(Tracker.restore_state(state, max_duration_us=60 * 10**6,
                                     setup_timeout_us=20 * 10**6)) == len(TRACKER)


if __name__ == "__main__":
    run(target)
