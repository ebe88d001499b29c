"""A capture file mapped with mmap is read in place, with the same result as its bytes."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest

from sip.capture import CaptureError, CaptureStats, read_capture

DATA = Path(__file__).resolve().parents[1] / "data"
FILES = sorted(p.name for p in DATA.iterdir() if p.suffix in (".hep", ".pcap"))


@pytest.mark.parametrize("name", FILES)
def test_a_mapped_capture_reads_as_its_bytes(name: str) -> None:
    path = DATA / name
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        mapped_stats, plain_stats = CaptureStats(), CaptureStats()
        mapped = list(read_capture(mm, mapped_stats))
        assert all(type(d.payload) is bytes for d in mapped)
    assert mapped == list(read_capture(path.read_bytes(), plain_stats))
    assert mapped and mapped_stats == plain_stats


def test_a_mapped_file_damaged_mid_way_raises_capture_error(tmp_path: Path) -> None:
    blob = bytearray((DATA / "kamailio_answered.hep").read_bytes())
    second = blob.index(b"HEP3", 4)
    blob[second : second + 4] = b"XXXX"  # the second record's magic: the framing breaks
    path = tmp_path / "bad.hep"
    path.write_bytes(bytes(blob))
    with (open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm,
          pytest.raises(CaptureError)):
        list(read_capture(mm))
