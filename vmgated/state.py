"""The dialog snapshot payload: the tracker's exported state plus calls awaiting commit.

A call the tracker has finished but the ledger has not yet acknowledged lives only in memory;
the snapshot carries it so a crash between the two cannot lose it (re-billing it after a
restart is a no-op if it did commit: the ledger key makes billing idempotent).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any

from sip.call import CallRecord, Disposition, Hop
from vmgated.pipeline import Billable

VERSION = 1
_HEAD = struct.Struct("!HI")


def _record_to_json(r: CallRecord) -> dict[str, Any]:
    return {
        "call_id": r.call_id, "from_tag": r.from_tag, "caller": r.caller, "callee": r.callee,
        "start": r.start, "answer": r.answer, "end": r.end, "sip_code": r.sip_code,
        "disposition": r.disposition.value,
        "hops": [[h.src[0], h.src[1], h.dst[0], h.dst[1], h.capture_id] for h in r.hops],
        "capture_ids": list(r.capture_ids), "correlation_id": r.correlation_id,
        "flags": list(r.flags),
    }


def _record_from_json(d: dict[str, Any]) -> CallRecord:
    return CallRecord(
        call_id=d["call_id"], from_tag=d["from_tag"], caller=d["caller"], callee=d["callee"],
        start=d["start"], answer=d["answer"], end=d["end"], sip_code=d["sip_code"],
        disposition=Disposition(d["disposition"]),
        hops=tuple(Hop((h[0], h[1]), (h[2], h[3]), h[4]) for h in d["hops"]),
        capture_ids=tuple(d["capture_ids"]), correlation_id=d["correlation_id"],
        flags=tuple(d["flags"]),
    )


def encode(tracker_state: bytes, pending: Iterable[Billable]) -> bytes:
    """Pack the tracker state and the not-yet-committed calls into one snapshot payload."""
    return b"".join(encode_pieces((tracker_state,), pending))


def encode_pieces(tracker_state: Iterable[bytes], pending: Iterable[Billable]) -> list[bytes]:
    """`encode`'s payload as a list of pieces (the tracker's as `sip.dialog.encode_state`
    yields them), for `Journal.write_snapshot` to write without joining them."""
    tracker = list(tracker_state)
    calls = [
        {"uid": b.uid, "trunk": b.trunk, "client": b.client, "record": _record_to_json(b.record)}
        for b in pending
    ]
    body = json.dumps(calls, separators=(",", ":")).encode()
    return [_HEAD.pack(VERSION, sum(map(len, tracker))), *tracker, body]


def decode(payload: bytes) -> tuple[bytes, list[Billable]]:
    """Unpack a snapshot payload; raises ValueError if it is not one we wrote."""
    if len(payload) < _HEAD.size:
        raise ValueError("snapshot too short")
    version, tlen = _HEAD.unpack_from(payload)
    if version != VERSION:
        raise ValueError(f"snapshot version {version}, this vmgated reads {VERSION}")
    tracker_state = payload[_HEAD.size : _HEAD.size + tlen]
    calls = json.loads(payload[_HEAD.size + tlen :] or b"[]")
    try:
        pending = [
            Billable(c["uid"], _record_from_json(c["record"]), c["trunk"], c["client"])
            for c in calls
        ]
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        # A damaged file must read as "not one we wrote", like any other bad snapshot: the
        # daemon then starts without it instead of failing its start over and over.
        raise ValueError(f"snapshot's pending calls are corrupt: {exc!r}") from None
    return tracker_state, pending
