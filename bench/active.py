"""Memory with many calls in progress: vmgated's RSS with N answered calls active (SPEC §10).

    /work/venv/bin/python bench/active.py [--calls 100000] [--rate 25000] [--hold 120]

Starts a real vmgated (`python -m vmgated.main`, own tmp state dir, the tenant of
tests/e2e/daemon.py) and sends, from this process, the first eight HEP packets of N calls
made from the recorded Kamailio capture (tests/data/kamailio_answered.hep, rewritten per call
as bench/e2e.py does: INVITE in and out of the proxy, 100, 180 ×2, 200 ×2, ACK), paced at
--rate packets/s. Every call is then answered and none has ended: N active calls. The bench
waits until `vmgated_active_calls` reads N and the daemon has written a dialog snapshot with
all of them (the snapshot is the biggest transient allocation), samples RSS, then sends every
call's BYE ×2 and 200 ×2 and waits until all N are in the ledger, each once, with the billsec
its timestamps give. RSS is sampled every second from /proc/PID/status (VmRSS split into
RssAnon and RssFile, and the peak VmHWM).

Baseline in the same run: a second Python process that keeps, per call, only the two INVITE
datagrams in a dict keyed by Call-ID — the memory of a naive tracker that holds each call's
INVITE until the call ends, against vmgated's whole daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import call_id_of, paced_send, rewrite, scrape, templates

from ledger.reports import connect_ro
from sip import hep
from tests.e2e.daemon import Vmgated, free_port, metric_value, write_config

SETUP = 8  # packets of a recorded call before its first BYE


def rss(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM of a process, in kB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


class Streams(NamedTuple):
    """What the bench sends and what the ledger must then hold."""

    setup: list[bytes]  # every call's first eight datagrams, in time order
    teardown: list[bytes]  # the rest (BYE ×2, 200 ×2), in time order
    billsec: dict[str, int]  # by Call-ID, from the timestamps of the answer and the BYE
    invites: list[tuple[str, bytes]]  # (Call-ID, datagram) of every INVITE, for the baseline


def streams(ncalls: int, cps: float, t0_us: int, hold_us: int, prefix: str) -> Streams:
    """The datagrams of `ncalls` calls made from the recording, split before the first BYE.

    Call i starts at t0 + i/cps; its teardown comes `hold_us` later than the recording's.
    """
    tmpl = templates()
    setup: list[tuple[int, bytes]] = []
    teardown: list[tuple[int, bytes]] = []
    billsec: dict[str, int] = {}
    invites: list[tuple[str, bytes]] = []
    for i in range(ncalls):
        which = i % len(tmpl)
        call = tmpl[which]
        token = f"{prefix}{i:x}".encode()
        base = t0_us + int(i * 1_000_000 / cps) - call[0].ts_us
        cid = call_id_of(which, prefix, i)
        answer = end = 0
        for n, pkt in enumerate(call):
            payload = rewrite(pkt.payload, token)
            ts = base + pkt.ts_us + (hold_us if n >= SETUP else 0)
            if not answer and payload.startswith(b"SIP/2.0 200 "):
                answer = ts
            if not end and payload.startswith(b"BYE "):
                end = ts
            data = hep.encode(payload, pkt.src, pkt.dst, ts, capture_id=pkt.capture_id)
            if payload.startswith(b"INVITE "):
                invites.append((cid, data))
            (setup if n < SETUP else teardown).append((ts, data))
        billsec[cid] = -(-(end - answer) // 1_000_000)  # what CallRecord.billsec computes
    setup.sort(key=lambda t: t[0])
    teardown.sort(key=lambda t: t[0])
    return Streams([d for _, d in setup], [d for _, d in teardown], billsec, invites)


def naive_baseline(invites: list[tuple[str, bytes]]) -> int:
    """kB a bare Python process grows by when it holds these INVITE datagrams by Call-ID."""
    code = (
        "import json, sys, pathlib\n"
        "def rss():\n"
        "    for l in pathlib.Path('/proc/self/status').read_text().splitlines():\n"
        "        if l.startswith('VmRSS:'): return int(l.split()[1])\n"
        "pairs = json.loads(sys.stdin.read())\n"
        "before = rss()\n"
        "held = {}\n"
        "for cid, hexdata in pairs:\n"
        "    held.setdefault(cid, []).append(bytes.fromhex(hexdata))\n"
        "del pairs\n"
        "import gc; gc.collect()\n"
        "print(rss() - before)\n"
    )
    payload = json.dumps([(c, d.hex()) for c, d in invites])
    out = subprocess.run(
        [sys.executable, "-c", code], input=payload, capture_output=True, text=True, check=True
    )
    return int(out.stdout)


class Sampler(threading.Thread):
    """Samples the daemon's memory every second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, str, dict[str, int]]] = []
        self.phase = "idle"  # set by the bench as it goes
        self.stop_flag = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_flag.wait(1.0):
            with contextlib.suppress(FileNotFoundError):  # between a stop and the restart
                self.samples.append((time.monotonic() - t0, self.phase, rss(self.pid)))


def loop_stall(port: int, action: Callable[[], object]) -> tuple[float, float]:
    """Run `action` in a thread while probing the daemon's event loop with tiny HTTP requests
    (GET of an unknown path: a 404 served on the loop); returns (action seconds, the longest
    probe's seconds), the latter being how long the loop could not answer."""
    done = threading.Event()
    took = [0.0]

    def run() -> None:
        began = time.monotonic()
        action()
        took[0] = time.monotonic() - began
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    longest = 0.0
    while not done.is_set():
        began = time.monotonic()
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/probe", timeout=30).read()
        longest = max(longest, time.monotonic() - began)
        time.sleep(0.01)
    worker.join()
    return took[0], longest


def wait_for(what: str, check: object, timeout: float) -> None:
    """Poll `check()` every 0.5 s until it is true; fail loudly after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def settle(count: object, target: int, quiet: float) -> int:
    """Poll `count()` each second until it reaches `target` or stays unchanged for `quiet` s."""
    last, since = -1, time.monotonic()
    while (now := count()) < target and time.monotonic() - since < quiet:  # type: ignore[operator]
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(1)
    return int(now)


def main() -> None:
    """Fill the daemon with active calls, measure, end them, check the ledger."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=25_000, help="HEP packets/s while sending")
    ap.add_argument("--hold", type=float, default=120.0, help="seconds added to each call")
    ap.add_argument(
        "--restart", choices=("term", "kill", "kill-busy"),
        help="stop the daemon with the calls active (SIGTERM or SIGKILL once a snapshot holds "
        "them all; kill-busy: SIGKILL as the last setup packet is sent), start it again, then "
        "end the calls",
    )  # fmt: skip
    ap.add_argument(
        "--teardown-rate", type=int, default=8_000,
        help="HEP packets/s for the BYEs: every 4 packets end a call, so 8,000/s bills 2,000 "
        "calls/s, under the ~2,500 calls/s end-to-end ceiling of bench/e2e.py",
    )  # fmt: skip
    args = ap.parse_args()
    n = args.calls
    cps = args.rate / SETUP
    t0 = time.time_ns() // 1000 + 2_000_000
    print(f"building {n:,} calls ...", flush=True)
    setup, teardown, billsec, invites = streams(n, cps, t0, int(args.hold * 1e6), "a")

    with tempfile.TemporaryDirectory(prefix="vmgated-active-") as tmp:
        d = Path(tmp)
        hep_port, metrics_port = free_port(), free_port(socket.SOCK_STREAM)
        cfg = write_config(d, hep_port=hep_port, metrics_port=metrics_port, capture_id=101)
        daemon = Vmgated(cfg).start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        sampler = Sampler(pid)
        try:
            time.sleep(2)
            idle = rss(pid)
            sampler.start()
            print(f"idle: {idle}", flush=True)
            sampler.phase = "setup"
            _, took = paced_send(hep_port, setup, args.rate)
            print(f"setup: {len(setup):,} packets in {took:.1f} s", flush=True)

            def active() -> int:
                value = metric_value(scrape(metrics_port), "vmgated_active_calls")
                return int(float(value or 0))

            def restart_daemon() -> tuple[float, float, int, dict[str, int], int]:
                nonlocal daemon, pid
                journal = sum(f.stat().st_size for f in (d / "var" / "dialogs").glob("journal.*"))
                began = time.monotonic()
                if args.restart == "term":
                    daemon.stop(timeout=300)
                else:
                    daemon.kill9()
                stopped = time.monotonic() - began
                sampler.phase = f"restart ({args.restart})"
                began = time.monotonic()
                daemon = Vmgated(cfg).start(timeout=300)
                ready = time.monotonic() - began
                assert daemon.proc is not None
                pid = sampler.pid = daemon.proc.pid
                back = settle(active, n, quiet=5)
                time.sleep(3)
                after = rss(pid)
                print(f"restart: journal {journal / 1e6:.1f} MB, stopped in {stopped:.1f} s, "
                      f"ready in {ready:.1f} s, {back:,} active again: {after}", flush=True)
                return stopped, ready, back, after, journal

            restart = None
            if args.restart == "kill-busy":
                # Before any snapshot holds the last calls: the journal holds the traffic since
                # the last one, which the restarted daemon must replay. 0.5 s first so the
                # daemon has read the last datagrams: what is still in the socket buffer of
                # a killed process is lost with it (UDP; a first run killed at once lost the
                # last 4 calls' answers that way).
                time.sleep(0.5)
                restart = restart_daemon()
            settle(active, n, quiet=5)
            sampler.phase = "active"
            snap = d / "var" / "dialogs" / "snapshot"
            seen = snap.stat().st_mtime if snap.exists() else 0.0
            wait_for(
                "a dialog snapshot with every call",
                lambda: snap.exists() and snap.stat().st_mtime > seen,
                120,
            )
            snap_size = snap.stat().st_size
            time.sleep(3)
            full = rss(pid)
            # A scrape is served on the event loop: its duration is a stall of the UDP reader.
            scrapes = []
            for _ in range(3):
                began = time.monotonic()
                metrics = scrape(metrics_port)
                scrapes.append(time.monotonic() - began)
            print(f"/metrics scrape with {n:,} calls active: "
                  f"{', '.join(f'{t * 1000:.0f}' for t in scrapes)} ms", flush=True)
            took, stall = loop_stall(metrics_port, lambda: daemon.ctl("calls", "--active",
                                                                      "--json"))
            print(f"`vmgatectl calls --active --json` with {n:,} calls active: {took:.2f} s, "
                  f"longest event-loop stall meanwhile {stall * 1000:.0f} ms", flush=True)
            drops = metric_value(metrics, "vmgated_udp_receive_errors_total")
            print(f"{active():,} active: {full}, kernel drops {drops}", flush=True)
            if args.restart in ("term", "kill"):
                restart = restart_daemon()

            sampler.phase = "teardown"
            _, took = paced_send(hep_port, teardown, args.teardown_rate)
            print(f"teardown: {len(teardown):,} packets in {took:.1f} s", flush=True)
            ledger = d / "var" / "ledger.db"

            def billed() -> int:
                conn = connect_ro(ledger)
                try:
                    return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
                finally:
                    conn.close()

            # Missing calls are reported below with the reason counters, not raised here.
            settle(billed, n, quiet=30)
            metrics = scrape(metrics_port)
            counters = {
                name: metric_value(metrics, name)
                for name in ("vmgated_udp_receive_errors_total", "vmgated_active_calls")
            }
            print(f"after teardown: {billed():,} in the ledger, {counters}", flush=True)
            for line in metrics.splitlines():
                if line.startswith(("vmgated_packets_total", "vmgated_calls_total")):
                    print("  ", line, flush=True)
            time.sleep(2)
            ended = rss(pid)
        finally:
            sampler.stop_flag.set()
            daemon.stop()
        conn = connect_ro(ledger)
        rows = conn.execute("SELECT call_id, billsec FROM calls").fetchall()
        conn.close()

    got: dict[str, list[int]] = {}
    for cid, secs in rows:
        got.setdefault(cid, []).append(secs)
    missing = [c for c in billsec if c not in got]
    twice = [c for c, v in got.items() if len(v) > 1]
    wrong = [c for c, v in got.items() if c in billsec and v[0] != billsec[c]]
    naive = naive_baseline(invites)
    peak = max(s["VmHWM"] for _, _, s in sampler.samples) if sampler.samples else full["VmHWM"]
    phases: dict[str, int] = {}
    for _, phase, sample in sampler.samples:
        phases[phase] = max(phases.get(phase, 0), sample["VmRSS"])

    mb = 1024
    print()
    print("| measure | vmgated | naive baseline: the INVITEs in a dict |")
    print("| --- | ---: | ---: |")
    print(f"| RSS idle (no call) | {idle['VmRSS'] / mb:.1f} MiB | – |")
    print(
        f"| RSS with {n:,} answered calls active | **{full['VmRSS'] / mb:.1f} MiB** "
        f"(anon {full['RssAnon'] / mb:.1f}, file {full['RssFile'] / mb:.1f}) | – |"
    )
    grow = full["VmRSS"] - idle["VmRSS"]
    print(
        f"| growth for {n:,} active calls | {grow / mb:.1f} MiB ({grow * 1024 / n:,.0f} B/call) "
        f"| {naive / mb:.1f} MiB ({naive * 1024 / n:,.0f} B/call) |"
    )
    print(f"| peak RSS (VmHWM) over the run | {peak / mb:.1f} MiB | – |")
    for phase, top in phases.items():
        print(f"| highest RSS sampled while {phase} | {top / mb:.1f} MiB | – |")
    if restart is not None:
        stopped, ready, back, after, journal = restart
        print(
            f"| restart ({args.restart}): stopped / ready again | {stopped:.1f} s / {ready:.1f} s "
            f"({back:,} calls active again; journal to replay {journal / 1e6:.1f} MB) | – |"
        )
        print(f"| RSS after the restart | {after['VmRSS'] / mb:.1f} MiB, peak (VmHWM) "
              f"{after['VmHWM'] / mb:.1f} MiB | – |")
    print(f"| RSS once every call ended and was billed | {ended['VmRSS'] / mb:.1f} MiB | – |")
    print(f"| dialog snapshot file at {n:,} active | {snap_size / 1e6:.1f} MB | – |")
    print(
        f"\ncalls billed {len(got):,} / {n:,}; missing {len(missing)}, billed twice "
        f"{len(twice)}, billsec differing from the timestamps {len(wrong)}"
    )
    verdict = "met" if peak * 1024 < 300_000_000 and not (missing or twice or wrong) else "NOT met"
    unexpected = [c for c in got if c not in billsec]
    for name, ids in (("missing", missing), ("unexpected", unexpected), ("wrong", wrong)):
        if ids:
            print(f"{name} (first 5): {ids[:5]}")
    print(
        f"target RSS < 300 MB (10^6 bytes) with {n:,} active calls, peak "
        f"{peak * 1024 / 1e6:.1f} MB: {verdict}"
    )


if __name__ == "__main__":
    main()
