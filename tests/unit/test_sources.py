"""The source allow-list and size limit shared by the listeners and the ingest process."""

from __future__ import annotations

import ipaddress

from vmgated.sources import SourceFilter

NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_counts_each_reason_and_keeps_the_rest_in_order() -> None:
    f = SourceFilter(NETS, max_datagram=4)
    batch = [(b"ok1", ("10.1.2.3", 5)), (b"far", ("192.0.2.1", 5)), (b"toolong", ("10.0.0.1", 5)),
             (b"ok2", ("::ffff:10.9.9.9", 7)), (b"bad", ("not-an-ip", 1))]
    kept, source, oversized, dropped_from = f.filter(batch)
    assert [d for d, _ in kept] == [b"ok1", b"ok2"]  # an IPv4-mapped source is matched as v4
    assert (source, oversized, dropped_from) == (2, 1, "not-an-ip")


def test_an_ipv6_socket_address_is_cut_to_host_and_port() -> None:
    f = SourceFilter(None, v6=True)
    assert not f.passes_all
    kept, _, _, dropped_from = f.filter([(b"x", ("::1", 9060, 0, 0))])
    assert kept == [(b"x", ("::1", 9060))] and dropped_from is None


def test_a_new_allow_list_forgets_the_old_verdicts() -> None:
    f = SourceFilter(NETS)
    assert f.allowed_source("10.0.0.1")
    f.set_allowed((ipaddress.ip_network("192.0.2.0/24"),))
    assert not f.allowed_source("10.0.0.1") and f.allowed_source("192.0.2.7")
    f.set_allowed(None)
    assert f.passes_all
