"""Kernel UDP drops parsed from /proc/net/udp{,6} text (the real-socket test is integration)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vmgated.app import App
from vmgated.config import load_config
from vmgated.logpace import LogPace
from vmgated.procnet import (
    UdpDropCounter,
    UdpSocketRow,
    parse_udp_table,
    read_tables,
    udp_drops,
    udp_queued,
)

# ruff: noqa: E501  (verbatim /proc/net/udp lines)
UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  120: 0100007F:2364 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41234 2 0000000000000000 17
  121: 00000000:0044 00000000:0000 07 00000000:00000A00 00:00000000 00000000     0        0 41235 2 0000000000000000 3
garbage line
"""
UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
   45: 00000000000000000000000001000000:2364 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41240 2 0000000000000000 5
"""


def test_rows_carry_port_inode_and_drops() -> None:
    assert list(parse_udp_table(UDP)) == [UdpSocketRow(9060, 41234, 17, 0),
                                          UdpSocketRow(68, 41235, 3, 0xA00)]


def test_queued_bytes_sum_over_the_inodes_asked_for(tmp_path: Path) -> None:
    (tmp_path / "udp").write_text(UDP)
    files = (str(tmp_path / "udp"),)
    assert udp_queued({41235}, files=files) == 2560
    assert udp_queued({41234, 41235}, files=files) == 2560
    assert udp_queued({1}, files=files) == 0


def test_drops_sum_over_ipv4_and_ipv6_by_port_or_inode(tmp_path: Path) -> None:
    (tmp_path / "udp").write_text(UDP)
    (tmp_path / "udp6").write_text(UDP6)
    files = (str(tmp_path / "udp"), str(tmp_path / "udp6"), str(tmp_path / "missing"))
    assert udp_drops([9060], files=files) == 22
    assert udp_drops([9060, 68], files=files) == 25
    assert udp_drops(inodes={41240}, files=files) == 5
    assert udp_drops([9070], files=files) == 0


def test_drop_counter_never_goes_backwards_when_a_socket_closes(tmp_path: Path) -> None:
    udp = tmp_path / "udp"
    udp.write_text(UDP)
    counter = UdpDropCounter(files=(str(udp),))
    assert counter.read({41234, 41235}) == 20
    udp.write_text(UDP.splitlines()[0] + "\n" + UDP.splitlines()[2] + "\n")  # 41234 closed
    assert counter.read({41235}) == 20
    assert counter.read({41235}) == 20


def test_an_unreadable_table_keeps_the_total_and_counts_nothing_twice(tmp_path: Path) -> None:
    udp = tmp_path / "udp"
    udp.write_text(UDP)
    counter = UdpDropCounter(files=(str(udp),))
    assert counter.read({41234, 41235}) == 20
    assert counter.readable
    udp.unlink()  # /proc hidden, or a read failing for a moment
    assert counter.read({41234, 41235}) == 20
    assert not counter.readable
    udp.write_text(UDP)  # back: the same sockets, the same drops (they had not closed)
    assert counter.read({41234, 41235}) == 20
    assert counter.readable


def test_read_tables_tells_no_table_from_an_empty_one(tmp_path: Path) -> None:
    header_only = tmp_path / "udp"
    header_only.write_text(UDP.splitlines()[0] + "\n")
    assert read_tables([str(header_only), str(tmp_path / "udp6")]) == []
    assert read_tables([str(tmp_path / "none"), str(tmp_path / "udp6")]) is None


def test_the_daemon_says_when_it_cannot_see_kernel_drops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config_path = Path(__file__).resolve().parents[2] / "conf" / "vmgated.yaml"
    app = App(config_path, load_config(config_path))
    app._drops = UdpDropCounter(files=(str(tmp_path / "udp"), str(tmp_path / "udp6")))
    with caplog.at_level(logging.WARNING, logger="vmgated"):
        assert app._udp_drops() == 0
        assert app._udp_drops() == 0  # said once per LOG_EVERY, not per scrape
    said = [r.getMessage() for r in caplog.records if "kernel drops" in r.getMessage()]
    assert len(said) == 1 and "/proc/self/net/udp" in said[0]
    caplog.clear()
    (tmp_path / "udp").write_text(UDP)
    app._procnet_log = LogPace()
    with caplog.at_level(logging.WARNING, logger="vmgated"):
        app._udp_drops()
    assert not caplog.records
