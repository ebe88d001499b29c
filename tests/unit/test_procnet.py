"""Kernel UDP drops parsed from /proc/net/udp{,6} text (the real-socket test is integration)."""

from __future__ import annotations

from pathlib import Path

from vmgated.procnet import (
    UdpDropCounter,
    UdpSocketRow,
    parse_udp_table,
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
