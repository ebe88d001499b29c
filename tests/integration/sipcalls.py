"""Synthetic calls for the daemon integration tests: real SIP text, real HEP, real UDP.

A call is traced the way Kamailio's siptrace (`sip_trace_mode("t")`) traces it through a
proxy: requests and replies twice (as received, as relayed), the proxy's own 100 once, the ACK
once: 12 HEP datagrams for an answered call (SPEC §3.1). Addresses default to the ones
`tests/e2e/daemon.write_config` attributes: the trunk at 127.0.0.11, the gateway at
127.0.0.21, the proxy (capture agent) at 127.0.0.1.

Not a test module: imported by tests/integration/test_daemon_*.py.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from sip import hep
from sip.call import Addr

TRUNK: Addr = ("127.0.0.11", 5060)
PROXY: Addr = ("127.0.0.1", 5060)
GATEWAY: Addr = ("127.0.0.21", 5060)
S = 1_000_000  # microseconds per second
# Call times near the wall clock (10 min behind, like a slightly wrong capture agent: the
# daemon expires each call on its own capture clock). Whole seconds keep values exact.
BASE = (time.time_ns() // 1000 // S - 600) * S


@dataclass(frozen=True, slots=True)
class Call:
    """One call's identity, number and times (EpochUs, capture time)."""

    call_id: str
    number: str = "12025550100"
    caller: str = "15551230000"
    start: int = BASE
    answer: int | None = BASE + 3 * S  # None: never answered
    end: int | None = BASE + 63 * S  # BYE time; None: still up
    final: int = 200  # final response code when not answered (486, 480...)
    trunk: Addr = TRUNK
    proxy: Addr = PROXY
    gateway: Addr = GATEWAY
    capture_id: int = 101

    @property
    def ruri(self) -> str:
        """Request-URI as the trunk dials it."""
        return f"sip:{self.number}@{self.proxy[0]}:{self.proxy[1]}"


def _request(c: Call, method: str, cseq: int, sent_by: Addr, to_tag: str | None,
             cseq_method: str | None = None) -> bytes:
    lines = [
        f"{method} {c.ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {sent_by[0]}:{sent_by[1]};branch=z9hG4bK-{c.call_id}-{method}-{cseq}",
        "Max-Forwards: 70",
        f'From: "Caller" <sip:{c.caller}@{c.trunk[0]}>;tag=tag-{c.call_id}',
        f"To: <sip:{c.number}@{c.proxy[0]}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {c.call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        f"Contact: <sip:{c.caller}@{c.trunk[0]}:{c.trunk[1]}>",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _response(c: Call, code: int, phrase: str, cseq: int, method: str,
              to_tag: str | None) -> bytes:
    lines = [
        f"SIP/2.0 {code} {phrase}",
        f"Via: SIP/2.0/UDP {c.trunk[0]}:{c.trunk[1]};branch=z9hG4bK-{c.call_id}-{method}-{cseq}",
        f'From: "Caller" <sip:{c.caller}@{c.trunk[0]}>;tag=tag-{c.call_id}',
        f"To: <sip:{c.number}@{c.proxy[0]}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {c.call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:{c.number}@{c.gateway[0]}:{c.gateway[1]}>",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


Message = tuple[bytes, Addr, Addr, int]  # SIP text, src, dst, capture time


def setup_messages(c: Call) -> list[Message]:
    """INVITE, 100, 180 and the final response (200 when answered), as the proxy traces them."""
    tag = f"uas-{c.call_id}"
    t0 = c.start
    out: list[Message] = [
        (_request(c, "INVITE", 1, c.trunk, None), c.trunk, c.proxy, t0),
        (_response(c, 100, "Trying", 1, "INVITE", None), c.proxy, c.trunk, t0 + 100),
        (_request(c, "INVITE", 1, c.proxy, None), c.proxy, c.gateway, t0 + 200),
        (_response(c, 180, "Ringing", 1, "INVITE", tag), c.gateway, c.proxy, t0 + 1000),
        (_response(c, 180, "Ringing", 1, "INVITE", tag), c.proxy, c.trunk, t0 + 1100),
    ]
    if c.answer is not None:
        a = c.answer
        out += [
            (_response(c, 200, "OK", 1, "INVITE", tag), c.gateway, c.proxy, a),
            (_response(c, 200, "OK", 1, "INVITE", tag), c.proxy, c.trunk, a + 100),
            (_request(c, "ACK", 1, c.trunk, tag), c.trunk, c.proxy, a + 200),
        ]
    else:
        when = c.end if c.end is not None else t0 + 2 * S
        out += [
            (_response(c, c.final, "Busy Here", 1, "INVITE", tag), c.gateway, c.proxy, when),
            (_request(c, "ACK", 1, c.proxy, tag), c.proxy, c.gateway, when + 100),
            (_response(c, c.final, "Busy Here", 1, "INVITE", tag), c.proxy, c.trunk, when + 200),
            (_request(c, "ACK", 1, c.trunk, tag), c.trunk, c.proxy, when + 300),
        ]
    return out


def teardown_messages(c: Call) -> list[Message]:
    """BYE from the trunk and its 200, each traced twice."""
    if c.answer is None or c.end is None:
        return []
    tag = f"uas-{c.call_id}"
    e = c.end
    return [
        (_request(c, "BYE", 2, c.trunk, tag), c.trunk, c.proxy, e),
        (_request(c, "BYE", 2, c.proxy, tag), c.proxy, c.gateway, e + 100),
        (_response(c, 200, "OK", 2, "BYE", tag), c.gateway, c.proxy, e + 1000),
        (_response(c, 200, "OK", 2, "BYE", tag), c.proxy, c.trunk, e + 1100),
    ]


def to_hep(messages: list[Message], capture_id: int = 101,
           auth_key: bytes | None = None) -> list[bytes]:
    """HEPv3-encode traced messages (capture time in the HEP timestamp)."""
    return [hep.encode(sip, src, dst, ts, capture_id=capture_id, auth_key=auth_key)
            for sip, src, dst, ts in messages]


def call_datagrams(c: Call) -> list[bytes]:
    """Every HEP datagram of a whole call, in capture order."""
    return to_hep(setup_messages(c) + teardown_messages(c), c.capture_id)


def send(port: int, datagrams: list[bytes], host: str = "127.0.0.1", pace_s: float = 0.0) -> None:
    """Send datagrams over real UDP from loopback (an allowed source)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data in datagrams:
            sock.sendto(data, (host, port))
            if pace_s:
                time.sleep(pace_s)


def send_call(port: int, c: Call) -> None:
    """Send one whole call."""
    send(port, call_datagrams(c))


def wait_for(predicate: object, timeout: float = 10.0, every: float = 0.05) -> None:
    """Poll `predicate()` until it is truthy, else fail with its last value."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s (last value {last!r})")


# -- a daemon per test ------------------------------------------------------------------------
def _load_e2e_daemon() -> ModuleType:
    # tests/e2e/daemon.py is the shared harness; load it by path (tests/ is not a package).
    path = Path(__file__).resolve().parents[1] / "e2e" / "daemon.py"
    spec = importlib.util.spec_from_file_location("vmgated_e2e_daemon", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


harness = _load_e2e_daemon()
DECK_NAMES = ("retail-a.csv", "client-std.csv", "reseller-alpha.csv")


@dataclass
class Env:
    """One test's tenant: its directory, config, ports, decks and daemon process."""

    dir: Path
    config: Path
    hep_port: int
    metrics_port: int
    cdr_port: int | None
    daemon: Any

    def deck(self, name: str) -> Path:
        """The test's own copy of a deck (edit it, then reload)."""
        return self.dir / "decks" / name

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`vmgatectl --config <cfg> ARGS` (works whether the daemon runs or not)."""
        result: subprocess.CompletedProcess[str] = self.daemon.ctl(*args, check=check)
        return result

    def ctl_json(self, *args: str) -> Any:
        """A vmgatectl command with --json, decoded."""
        return self.daemon.ctl_json(*args)

    def send(self, *calls: Call) -> None:
        """Send whole calls to the HEP port."""
        send(self.hep_port, [d for c in calls for d in call_datagrams(c)])

    def scrape(self) -> str:
        """GET /metrics."""
        text: str = self.daemon.scrape(self.metrics_port)
        return text

    def calls(self, *args: str) -> list[dict[str, Any]]:
        """`vmgatectl calls --json ARGS`."""
        result: list[dict[str, Any]] = self.ctl_json("calls", *args)
        return result

    def wait_calls(self, count: int, *args: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Poll `calls` until exactly `count` calls are in history (a durable commit)."""
        wait_for(lambda: len(self.calls(*args)) >= count, timeout)
        found = self.calls(*args)
        assert len(found) == count, found
        return found

    def restart(self) -> None:
        """A fresh daemon process on the same config and state."""
        self.daemon = harness.Vmgated(self.config).start()


def make_env(directory: Path, *, cdr: bool = False, start: bool = True, extra: str = "",
             env: dict[str, str] | None = None, auth_key: str | None = None) -> Env:
    """Write a config with private deck copies and free ports; start the daemon."""
    (directory / "decks").mkdir(parents=True, exist_ok=True)
    for name in DECK_NAMES:
        shutil.copyfile(harness.DECKS / name, directory / "decks" / name)
    hep_port = harness.free_port()
    metrics_port = harness.free_port(socket.SOCK_STREAM)
    cdr_port = harness.free_port() if cdr else None
    config = harness.write_config(directory, hep_port=hep_port, metrics_port=metrics_port,
                                  cdr_port=cdr_port, extra=extra, auth_key=auth_key)
    config.write_text(config.read_text().replace(str(harness.DECKS), "decks"))
    daemon = harness.Vmgated(config)
    if env:
        daemon.env.update(env)
    if start:
        daemon.start()
    return Env(directory, config, hep_port, metrics_port, cdr_port, daemon)
