"""What the dialog tracker emits: one `CallRecord` per call, with the hops it crossed.

Times are integer microseconds since the Unix epoch (UTC), taken from the HEP capture
timestamp, never from the receive clock, so a replay produces the same records as the live run.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from hashlib import blake2b

Addr = tuple[str, int]  # (ip text, port)


class Disposition(StrEnum):
    """How a call ended, as a switch operator reads it."""

    ANSWERED = "answered"
    BUSY = "busy"  # 486, 600
    NO_ANSWER = "no_answer"  # 408, 480, or the caller gave up after ringing
    CANCELLED = "cancelled"  # CANCEL → 487
    FAILED = "failed"  # any other 3xx–6xx
    TIMEOUT = "timeout"  # never got a final response before expiry


@dataclass(frozen=True, slots=True)
class Hop:
    """One captured copy of the initial INVITE: who sent it where, seen by which agent.

    Also, after the INVITE copies, the hop a final reply to that INVITE implies when no copy
    went that way (`src` the address the reply went to, `dst` the responder): SPEC §4's
    "responder" rule for finding the VMGateClient.
    """

    src: Addr
    dst: Addr
    capture_id: int | None


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A finished call. `end` is set for every record (for unanswered calls: the final reply)."""

    call_id: str
    from_tag: str
    caller: str  # From URI user
    callee: str  # Request-URI user of the first INVITE (the dialled number, un-normalised)
    start: int  # first INVITE capture time, EpochUs
    answer: int | None  # first 2xx to the initial INVITE
    end: int  # first BYE, or final response, or forced close
    sip_code: int  # final response code to the initial INVITE (200 for answered calls)
    disposition: Disposition
    hops: tuple[Hop, ...]
    capture_ids: tuple[int, ...] = ()
    correlation_id: str | None = None
    flags: tuple[str, ...] = ()  # "max_duration", "session_expired", ...

    @property
    def uid(self) -> str:
        """Stable id for exactly-once billing: same call, same uid, across copies and restarts."""
        key = f"{self.call_id}\x00{self.from_tag}\x00{self.start}".encode()
        return blake2b(key, digest_size=12).hexdigest()

    @property
    def billsec(self) -> int:
        """ceil(answer→end) in seconds; 0 for unanswered calls (ring time is never billed)."""
        if self.answer is None or self.end <= self.answer:
            return 0
        return -(-(self.end - self.answer) // 1_000_000)
