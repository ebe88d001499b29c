"""Restart safety: the snapshot + journal pair never loses a journalled datagram."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmgated import journal
from vmgated.journal import CDR, HEP, Journal, decode_entries, encode_entries


def test_first_start_recovers_nothing(tmp_path: Path) -> None:
    rec = Journal(tmp_path).recover()
    assert rec.snapshot is None and list(rec.entries()) == []


def test_a_snapshot_without_our_header_is_reported_and_its_journals_kept(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    j.checkpoint(b"state-1")
    j.append(HEP, [(b"a", ("127.0.0.1", 9060))])
    (tmp_path / "dialogs" / "snapshot").write_bytes(b"")  # e.g. a disk that lost the file
    again = Journal(tmp_path)
    rec = again.recover()
    assert rec.snapshot is None and rec.damaged == "0 bytes without the b'VMGS' header"
    assert [e.payload for e in rec.entries()] == [b"a"]  # still replayed
    kept = again.set_aside_snapshot()
    assert kept.name == "snapshot.unreadable" and kept.read_bytes() == b""
    assert Journal(tmp_path).recover().damaged is None  # gone, not reported again


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
    assert [(e.kind, e.sender, e.payload) for e in rec.entries()] == [
        (HEP, "127.0.0.1:9060", b"a"),
        (HEP, "::1:9", b"b"),
        (CDR, "10.0.0.1:9070", b"{}"),
    ]


def test_crash_while_the_snapshot_is_written_replays_both_journals(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    j.append(HEP, [(b"x", ("127.0.0.1", 1))])
    gen = j.begin_checkpoint()  # the state was copied here; its snapshot is not written yet
    j.append(HEP, [(b"y", ("127.0.0.1", 1))])
    # kill -9 now: the old snapshot (none) and journals 0 and 1 are the truth
    assert gen == 1
    rec = Journal(tmp_path).recover()
    assert rec.snapshot is None
    assert [e.payload for e in rec.entries()] == [b"x", b"y"]


def test_after_recovering_two_journals_appends_go_to_the_newer(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    j.append(HEP, [(b"x", ("127.0.0.1", 1))])
    j.begin_checkpoint()
    j.append(HEP, [(b"y", ("127.0.0.1", 1))])
    j2 = Journal(tmp_path)
    j2.recover()
    j2.append(HEP, [(b"z", ("127.0.0.1", 1))])
    assert [e.payload for e in Journal(tmp_path).recover().entries()] == [b"x", b"y", b"z"]


def test_written_snapshot_drops_only_the_journals_it_covers(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    j.append(HEP, [(b"before", ("127.0.0.1", 1))])
    gen = j.begin_checkpoint()
    j.append(HEP, [(b"during", ("127.0.0.1", 1))])  # the loop goes on while it is written
    j.write_snapshot(gen, [b"part-1,", b"part-2"])
    j.checkpoint_done()
    j.append(HEP, [(b"after", ("127.0.0.1", 1))])
    assert sorted(p.name for p in (tmp_path / "dialogs").glob("journal.*")) == ["journal.1"]
    rec = Journal(tmp_path).recover()
    assert rec.snapshot == b"part-1,part-2"
    assert [e.payload for e in rec.entries()] == [b"during", b"after"]


def test_crash_after_the_snapshot_before_the_old_journal_went(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    j.append(HEP, [(b"covered", ("127.0.0.1", 1))])
    j.checkpoint(b"state-1")
    j.append(HEP, [(b"new", ("127.0.0.1", 1))])
    # as if killed between os.replace and the unlink: the covered journal is still there
    (tmp_path / "dialogs" / "journal.0").write_bytes(
        encode_entries(HEP, [(b"covered", ("127.0.0.1", 1))])
    )
    rec = Journal(tmp_path).recover()
    assert rec.snapshot == b"state-1"
    assert [e.payload for e in rec.entries()] == [b"new"]
    assert not (tmp_path / "dialogs" / "journal.0").exists()


def test_no_second_snapshot_starts_while_one_is_written(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    assert j.checkpoint_due()
    gen = j.begin_checkpoint()
    assert not j.checkpoint_due()
    j.write_snapshot(gen, [b"s"])
    j.checkpoint_done()
    assert not j.checkpoint_due()  # spaced: at most one per SNAPSHOT_MIN_S


def test_a_snapshot_the_disk_refuses_leaves_no_part_written_file_and_backs_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while writing: the part-written snapshot.tmp used to stay, holding the space
    the ledger needs, and a new try (and journal file) came every second."""
    clock = [1000.0]
    monkeypatch.setattr(journal.time, "monotonic", lambda: clock[0])
    j = Journal(tmp_path)
    j.recover()
    j.checkpoint(b"state-1")
    j.append(HEP, [(b"kept", ("127.0.0.1", 1))])

    def pieces() -> Iterator[bytes]:
        yield b"x" * 100_000
        raise OSError(errno.ENOSPC, "No space left on device")

    assert j.checkpoint_due()
    gen = j.begin_checkpoint()
    with pytest.raises(OSError):
        j.write_snapshot(gen, pieces())
    j.checkpoint_done(failed=True)
    assert sorted(p.name for p in (tmp_path / "dialogs").iterdir()) == [
        "journal.1", "journal.2", "snapshot"
    ]
    clock[0] += journal.SNAPSHOT_RETRY_S - 0.1
    assert not j.checkpoint_due()
    clock[0] += 0.2
    assert j.checkpoint_due()
    rec = Journal(tmp_path).recover()  # the old snapshot and both journals: nothing lost
    assert rec.snapshot == b"state-1" and [e.payload for e in rec.entries()] == [b"kept"]


def test_torn_tail_is_ignored() -> None:
    # Two senders: a record per datagram, and only the torn one is lost.
    data = encode_entries(HEP, [(b"one", ("1.2.3.4", 5)), (b"two", ("1.2.3.4", 6))])
    assert [e.payload for e in decode_entries(data[:-1])] == [b"one"]
    # One sender: one run record, read only whole (one write: a crash cannot tear it; power
    # loss may, and then the batch goes as the datagrams after it do).
    run = encode_entries(HEP, [(b"one", ("1.2.3.4", 5)), (b"two", ("1.2.3.4", 5))])
    assert len(run) < len(data)
    for cut in range(len(run)):
        assert list(decode_entries(data + run[:cut])) == list(decode_entries(data))
    assert [e.payload for e in decode_entries(data + run)] == [b"one", b"two"] * 2


def test_journals_written_one_record_per_datagram_are_still_read() -> None:
    """The framing of journals left by a build before 2026-11-24, a restart after upgrade."""
    old = b"".join(
        bytes([HEP]) + len(s).to_bytes(2, "big") + s + len(p).to_bytes(4, "big") + p
        for s, p in ((b"10.0.0.1:5060", b"INVITE"), (b"10.0.0.1:5060", b""))
    )
    assert [(e.kind, e.sender, e.payload) for e in decode_entries(old)] == [
        (HEP, "10.0.0.1:5060", b"INVITE"),
        (HEP, "10.0.0.1:5060", b""),
    ]


@given(
    st.lists(st.tuples(st.binary(max_size=64), st.sampled_from([5060, 5060, 9])), max_size=20),
    st.sampled_from([HEP, CDR]),
)
def test_encode_decode_round_trip(items: list[tuple[bytes, int]], kind: int) -> None:
    batch = [(p, ("192.0.2.1", port)) for p, port in items]
    out = list(decode_entries(encode_entries(kind, batch)))
    assert [(e.kind, e.payload, e.sender) for e in out] == [
        (kind, p, f"192.0.2.1:{port}") for p, port in items
    ]


def test_replay_reads_records_across_chunk_boundaries_and_skips_a_torn_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "_READ_CHUNK", 7)  # every record spans two or more reads
    j = Journal(tmp_path)
    j.recover()
    payloads = [bytes([65 + i]) * (i * 5) for i in range(12)]  # 0 to 55 bytes
    j.append(HEP, [(p, ("192.0.2.1", 5060)) for p in payloads])
    j.close()
    path = tmp_path / "dialogs" / "journal.0"
    path.write_bytes(path.read_bytes() + encode_entries(CDR, [(b"torn", ("x", 1))])[:-2])
    rec = Journal(tmp_path).recover()
    assert [(e.kind, e.payload) for e in rec.entries()] == [(HEP, p) for p in payloads]


# -- the ingest process's journals (vmgated/ingest.py) ----------------------------------------
PROXY = ("127.0.0.1", 9060)


def _payloads(entries: Iterator[journal.Entry]) -> list[bytes]:
    return [e.payload for e in entries]


def test_ingest_position_is_where_the_next_batch_starts(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    w = journal.IngestJournal(j.dir, j.next_ingest_gen())
    assert w.position == (1, 0)
    w.append(HEP, [(b"a", PROXY), (b"b", PROXY)])
    after_first = w.position
    assert after_first == (1, (j.dir / "ingest.1").stat().st_size)
    w.append(HEP, [(b"c", PROXY)])
    assert _payloads(j.ingest_tail(after_first)) == [b"c"]
    assert _payloads(j.ingest_tail(journal.IngestPosition(1, 0))) == [b"a", b"b", b"c"]
    assert _payloads(j.ingest_tail(w.position)) == []


def test_ingest_journal_moves_to_a_new_file_past_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "INGEST_ROTATE_BYTES", 20)
    j = Journal(tmp_path)
    j.recover()
    w = journal.IngestJournal(j.dir, 4)
    w.append(HEP, [(b"x" * 30, PROXY)])  # past the size: the next batch starts ingest.5
    mid = w.position
    w.append(HEP, [(b"y", PROXY)])
    assert mid.gen == 4 and w.position.gen == 5
    assert sorted(p.name for p in j.dir.glob("ingest.*")) == ["ingest.4", "ingest.5"]
    assert _payloads(j.ingest_tail(mid)) == [b"y"]  # the rest of ingest.4 is empty
    assert j.next_ingest_gen() == 6  # never a file that exists (it may end torn)


def test_snapshot_keeps_the_ingest_position_and_replay_starts_there(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    w = journal.IngestJournal(j.dir, 2)
    w.append(HEP, [(b"before", PROXY)])
    pos = w.position
    (j.dir / "ingest.1").write_bytes(b"covered by the snapshot")
    gen = j.begin_checkpoint()
    j.write_snapshot(gen, [b"state"], pos)
    j.checkpoint_done()
    assert not (j.dir / "ingest.1").exists()  # older than the position: dropped
    w.append(HEP, [(b"after", PROXY)])
    w2 = journal.IngestJournal(j.dir, 3)  # a restarted ingest process
    w2.append(HEP, [(b"later", PROXY)])
    # kill -9: the next start reads the position and replays from it
    rec = Journal(tmp_path).recover()
    assert rec.snapshot == b"state" and rec.ingest == pos
    assert _payloads(rec.entries()) == [b"after", b"later"]


def test_a_snapshot_written_before_ingest_positions_is_read_from_the_start(
    tmp_path: Path,
) -> None:
    d = tmp_path / "dialogs"
    d.mkdir()
    (d / "snapshot").write_bytes(b"VMGS" + (3).to_bytes(4, "big") + b"old state")
    rec = Journal(tmp_path).recover()
    assert rec.snapshot == b"old state" and rec.ingest == (0, 0) and rec.damaged is None


def test_a_torn_ingest_record_ends_only_its_own_file(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.recover()
    w = journal.IngestJournal(j.dir, 1)
    w.append(HEP, [(b"whole", PROXY)])
    with open(j.dir / "ingest.1", "ab") as f:  # killed mid-write
        f.write(encode_entries(HEP, [(b"torn", PROXY)])[:-2])
    w2 = journal.IngestJournal(j.dir, j.next_ingest_gen())
    w2.append(HEP, [(b"next", PROXY)])
    assert _payloads(Journal(tmp_path).recover().entries()) == [b"whole", b"next"]
