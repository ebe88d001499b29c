"""Frames between the ingest process and the daemon: cut anywhere, read whole, in order."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ledger.sinkclient import FRAME, dump_frame
from vmgated.ingest import Frame
from vmgated.ingestclient import _Reader


def frame(n: int) -> Frame:
    return Frame(1, n, 0, [((f"m{n}",), n, ("10.0.0.1", 5060), ("10.0.0.2", 5060), None, None)],
                 [], 0, 0, None, 0, None)


def read(chunks: list[bytes]) -> tuple[list[Any], int]:
    got: list[Any] = []
    broken: list[int] = []

    async def go() -> None:
        reader = _Reader(got.append, lambda: broken.append(1))
        for chunk in chunks:
            reader.data_received(chunk)

    asyncio.run(go())
    return got, len(broken)


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=8), st.integers(1, 5))
def test_frames_cut_at_any_byte_arrive_whole_and_in_order(cuts: list[int], count: int) -> None:
    stream = b"".join(dump_frame(frame(n)) for n in range(count))
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    chunks = [stream[a:b] for a, b in pairwise(edges)]
    got, broken = read(chunks)
    assert [g.offset for g in got] == list(range(count)) and broken == 0
    assert isinstance(got[0], Frame)


def test_an_unreadable_frame_ends_the_process_and_nothing_after_it_is_read() -> None:
    junk = FRAME.pack(3) + b"\x80\x05X"  # a pickle cut short
    got, broken = read([dump_frame(frame(0)) + junk + dump_frame(frame(1)),
                        dump_frame(frame(2))])
    assert [g.offset for g in got] == [0] and broken == 1
