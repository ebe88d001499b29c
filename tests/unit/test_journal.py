"""Restart safety: the snapshot + journal pair never loses a journalled datagram."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from vmgated.journal import CDR, HEP, Journal, decode_entries, encode_entries


def test_first_start_recovers_nothing(tmp_path: Path) -> None:
    rec = Journal(tmp_path).recover()
    assert rec.snapshot is None and rec.entries == ()


def test_entries_after_the_snapshot_are_replayed(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    j.append(HEP, [(b"old", ("127.0.0.1", 1))])
    j.checkpoint(b"state-1")
    j.append(HEP, [(b"a", ("127.0.0.1", 9060)), (b"b", ("::1", 9))])
    j.append(CDR, [(b"{}", ("10.0.0.1", 9070))])
    # no close(): this is what kill -9 leaves behind
    rec = Journal(tmp_path).recover()
    assert rec.snapshot == b"state-1"
    assert [(e.kind, e.sender, e.payload) for e in rec.entries] == [
        (HEP, "127.0.0.1:9060", b"a"),
        (HEP, "::1:9", b"b"),
        (CDR, "10.0.0.1:9070", b"{}"),
    ]


def test_crash_after_new_journal_before_snapshot_keeps_old_pair(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    j.append(HEP, [(b"x", ("127.0.0.1", 1))])
    # simulate: the next generation's journal exists but the snapshot was never replaced
    (tmp_path / "dialogs" / "journal.1").write_bytes(b"")
    rec = Journal(tmp_path).recover()
    assert rec.snapshot is None
    assert [e.payload for e in rec.entries] == [b"x"]
    assert not (tmp_path / "dialogs" / "journal.1").exists()


def test_torn_tail_is_ignored() -> None:
    data = encode_entries(HEP, [(b"one", ("1.2.3.4", 5)), (b"two", ("1.2.3.4", 5))])
    assert [e.payload for e in decode_entries(data[:-1])] == [b"one"]


@given(st.lists(st.tuples(st.binary(max_size=64), st.integers(0, 65535)), max_size=20))
def test_encode_decode_round_trip(items: list[tuple[bytes, int]]) -> None:
    batch = [(p, ("192.0.2.1", port)) for p, port in items]
    out = list(decode_entries(encode_entries(HEP, batch)))
    assert [(e.payload, e.sender) for e in out] == [(p, f"192.0.2.1:{port}") for p, port in items]
