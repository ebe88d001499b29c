"""End-to-end throughput: HEP → CDR → rated → durably in the ledger, at increasing rates.

    /work/venv/bin/python bench/e2e.py [--rates 10000,20000,...] [--seconds 5] [--profile DIR]
                                       [--no-raw] [--deck-prefixes 100000]

Starts a real vmgated (`python -m vmgated.main`, own tmp state dir, the tenant of
tests/e2e/daemon.py: trunk 127.0.0.11, client 127.0.0.21), then for each rate a SECOND process
replays a Kamailio-shaped HEP stream built from tests/data/kamailio_answered.hep (real siptrace
output, 12 HEPv3 packets per answered call): every copy of a recorded call gets its own
Call-ID, From/To tags and Via branches (sipp's PID token and every branch rewritten) and its
timestamps shifted so call i starts i/cps seconds after the run start, the dialled "service"
replaced by 442071234567 (so every call is rated), then re-encoded with `sip.hep.encode`.
Packets are sent in timestamp order, paced in 1 ms bursts.

For each rate: packets sent (and the rate the sender really achieved), calls expected vs
calls billed (counted read-only in the ledger after the daemon drained), kernel drops
(`vmgated_udp_receive_errors_total` delta), non-ok `vmgated_packets_total` delta, zero loss
yes/no, and BYE → durable commit latency p50/p99: the sender records the wall time each call's
first BYE left (end of its 1 ms burst), a poller thread reads new `calls` rows read-only every
POLL_S and stamps when it first saw each one (a row is visible only once its COMMIT is done,
so this is an upper bound of the commit time with POLL_S + query time resolution). Also per
rate: seconds the daemon spent in cycle collections (`vmgated_gc_pause_seconds_total` delta)
and its longest collection so far; the daemon's CPU (all threads, /proc/PID/stat, from before
the sender starts to the end of the drain) per packet and in cores over the send, and the
sender's own CPU while it sent. `--reload-at S` runs `vmgatectl reload` S seconds into each
rate's send and reports what it said and how long it took. `--deck-prefixes N` prices with
three generated N-prefix decks (bench/gen_deck.py, one per plan) instead of the tenant's small ones.

Baseline in the same run: the same sender at the same rates against a minimal uvloop
`DatagramProtocol` that only counts datagrams (same 32 MiB receive buffer), plus one unpaced
run (as fast as the sender can go), which is the raw uvloop UDP receive ceiling here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ledger.reports import connect_ro  # noqa: E402
from sip import hep  # noqa: E402
from tests.e2e.daemon import Vmgated, free_port, metric_value, write_config  # noqa: E402
from tests.e2e.stack import split_hep3  # noqa: E402

CAPTURE = ROOT / "tests" / "data" / "kamailio_answered.hep"
RCVBUF = 32 * 1024 * 1024  # the daemon's listener default (vmgated.listeners.DEFAULT_RCVBUF)
POLL_S = 0.01
BURST_S = 0.001
_BRANCH = re.compile(rb"branch=z9hG4bK")
NUMBER = b"442071234567"
# sipp UAC / UAS PIDs inside Call-IDs, tags and branches. Replaced in one pass: one by one,
# call 0x10079's token "a10079" had its "10079" replaced again by the second pass.
_SIPP_PIDS = re.compile(rb"10086|10079")


# -- stream ----------------------------------------------------------------------------------
def templates() -> list[list[hep.HepPacket]]:
    """The recorded calls, each as its 12 decoded HEP packets in capture order."""
    calls: dict[bytes, list[hep.HepPacket]] = defaultdict(list)
    for data in split_hep3(CAPTURE.read_bytes()):
        pkt = hep.decode(data)
        cid = re.search(rb"\r\nCall-ID: *([^\r]+)", pkt.payload)
        assert cid is not None
        calls[cid.group(1)].append(pkt)
    return list(calls.values())


def rewrite(payload: bytes, token: bytes) -> bytes:
    """A recorded SIP message made a new call's: Call-ID, tags and branches carry `token`."""
    payload = _SIPP_PIDS.sub(lambda _: token, payload)
    payload = _BRANCH.sub(b"branch=z9hG4bK" + token + b"x", payload)
    # sipp dials "service"; a real E.164 number makes every call go through rating.
    return payload.replace(b"service", NUMBER)


def call_id_of(template: int, prefix: str, i: int) -> str:
    """The Call-ID `rewrite` gives call `i` made from recorded call number `template`."""
    return f"{template + 1}-{prefix}{i:x}@127.0.0.11"


def build_stream(prefix: str, rate: int, seconds: float, t0_us: int) -> tuple[
        list[bytes], list[int], list[str]]:
    """Datagrams in send order, the stream index of each call's first BYE, and the Call-IDs."""
    tmpl = templates()
    per_call = len(tmpl[0])
    cps = rate / per_call
    ncalls = max(1, int(cps * seconds))
    timed: list[tuple[int, int, bytes, bool]] = []
    call_ids: list[str] = []
    for i in range(ncalls):
        call = tmpl[i % len(tmpl)]
        token = f"{prefix}{i:x}".encode()
        base = t0_us + int(i * 1_000_000 / cps)
        first = call[0].ts_us
        seen_bye = False
        for pkt in call:
            payload = rewrite(pkt.payload, token)
            is_bye = payload.startswith(b"BYE ") and not seen_bye
            seen_bye = seen_bye or is_bye
            ts = base + pkt.ts_us - first
            data = hep.encode(payload, pkt.src, pkt.dst, ts, capture_id=pkt.capture_id)
            timed.append((ts, i, data, is_bye))
        call_ids.append(call_id_of(i % len(tmpl), prefix, i))
    timed.sort(key=lambda t: (t[0], t[1]))
    byes = [0] * ncalls
    for idx, (_, i, _, is_bye) in enumerate(timed):
        if is_bye:
            byes[i] = idx
    return [t[2] for t in timed], byes, call_ids


def send(port: int, rate: int, seconds: float, prefix: str, out: str, raw_count: int) -> None:
    """Sender process: build the stream, then send it paced (rate 0: as fast as possible)."""
    if raw_count:
        data = b"HEP3" + b"x" * 496
        packets, byes, call_ids = [data] * raw_count, [], []
    else:
        # Timestamps start 2 s ahead: building the stream takes about that long.
        packets, byes, call_ids = build_stream(prefix, rate, seconds,
                                               time.time_ns() // 1000 + 2_000_000)
    cpu = time.process_time()
    bursts, elapsed = paced_send(port, packets, rate)
    cpu = time.process_time() - cpu
    n = len(packets)
    # The BYE at stream index k left during the first burst whose cumulative count passed k.
    bye_times: dict[str, float] = {}
    b = 0
    for call_id, k in sorted(zip(call_ids, byes, strict=True), key=lambda t: t[1]):
        while bursts[b][0] <= k:
            b += 1
        bye_times[call_id] = bursts[b][1]
    Path(out).write_text(json.dumps({"packets": n, "calls": len(call_ids), "elapsed": elapsed,
                                     "cpu": cpu, "bye_times": bye_times}))


def paced_send(port: int, packets: list[bytes], rate: int) -> tuple[list[tuple[int, float]], float]:
    """Send `packets` to 127.0.0.1:port in 1 ms bursts at `rate` per second (0: unpaced).

    Returns (packets sent so far, wall time) after each burst, and the seconds it took.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect(("127.0.0.1", port))
    sendmsg = sock.send
    n = len(packets)
    bursts: list[tuple[int, float]] = []
    sent = 0
    start = time.perf_counter()
    burst = max(1, int(rate * BURST_S)) if rate else n
    while sent < n:
        due = n if not rate else min(n, int((time.perf_counter() - start) * rate) + burst)
        while sent < due:
            try:
                sendmsg(packets[sent])
            except (BlockingIOError, ConnectionRefusedError):
                time.sleep(0)
                continue
            sent += 1
        bursts.append((sent, time.time()))
        if sent < n:
            nxt = start + (sent + 1) / rate
            delay = nxt - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    elapsed = time.perf_counter() - start
    sock.close()
    return bursts, elapsed


def run_sender(port: int, rate: int, seconds: float, prefix: str, raw_count: int = 0
               ) -> dict[str, Any]:
    """Run the sender in its own process and return what it reported."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        subprocess.run([sys.executable, __file__, "--send", str(port), str(rate), str(seconds),
                        prefix, out, str(raw_count)], check=True)
        result: dict[str, Any] = json.loads(Path(out).read_text())
        return result
    finally:
        os.unlink(out)


# -- raw uvloop baseline -----------------------------------------------------------------------
def raw_receiver(port_file: str) -> None:
    """Baseline process: a bare uvloop DatagramProtocol counting datagrams until idle."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind(("127.0.0.1", 0))
        count = [0, 0.0]

        class Count(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                count[0] += 1
                count[1] = time.monotonic()

        await loop.create_datagram_endpoint(Count, sock=sock)
        Path(port_file).write_text(str(sock.getsockname()[1]))
        # Report the running count on every line of stdin ("?"); exit on EOF.
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.readline():
            while time.monotonic() - max(count[1], 0) < 0.5:  # wait until idle
                await asyncio.sleep(0.1)
            print(int(count[0]), flush=True)

    uvloop.run(main())


def raw_baseline(rates: list[int], seconds: float) -> list[tuple[str, int, int, float]]:
    """(label, sent, received, achieved rate) for each paced rate and one unpaced run."""
    with tempfile.TemporaryDirectory() as d:
        port_file = Path(d) / "port"
        proc = subprocess.Popen([sys.executable, __file__, "--raw-recv", str(port_file)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        port = int(port_file.read_text())
        rows = []
        before = 0
        runs = [(str(r), r, int(r * seconds)) for r in rates] + [("unpaced", 0, 600_000)]
        for label, rate, count in runs:
            res = run_sender(port, rate, seconds, "raw", raw_count=count)
            proc.stdin.write("?\n")
            proc.stdin.flush()
            total = int(proc.stdout.readline())
            rows.append((label, res["packets"], total - before, res["packets"] / res["elapsed"]))
            before = total
        proc.stdin.close()
        proc.wait(timeout=10)
        return rows


# -- daemon side -----------------------------------------------------------------------------
class CommitPoller(threading.Thread):
    """Reads new `calls` rows read-only every POLL_S; remembers when each Call-ID showed up."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.seen: dict[str, float] = {}
        self.stop_flag = threading.Event()
        self.last_seq = 0

    def run(self) -> None:
        while not self.db.exists():
            time.sleep(POLL_S)
        conn = connect_ro(self.db)
        while not self.stop_flag.is_set():
            rows = conn.execute("SELECT seq, call_id FROM calls WHERE seq > ? ORDER BY seq",
                                (self.last_seq,)).fetchall()
            now = time.time()
            for seq, call_id in rows:
                self.seen.setdefault(call_id, now)
                self.last_seq = seq
            time.sleep(POLL_S)
        conn.close()

    def count(self, prefix_ids: set[str]) -> int:
        """How many of these Call-IDs are in the ledger (as seen by the last poll)."""
        return sum(1 for c in prefix_ids if c in self.seen)


def scrape(port: int) -> str:
    """GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pid(parent: int, module: str) -> int | None:
    """The daemon's child process running `python -m <module>`, if any."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) != parent:
                continue
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if module.encode() in cmd:
            return int(stat.parent.name)
    return None


def children_cpu(parent: int) -> dict[str, float]:
    """CPU seconds of the daemon's ingest and ledger write processes (0 when absent)."""
    out = {}
    for name, module in (("ingest", "vmgated.ingest"), ("writer", "ledger.sink")):
        pid = child_pid(parent, module)
        try:
            out[name] = cpu_seconds(pid) if pid is not None else 0.0
        except OSError:  # it ended in between
            out[name] = 0.0
    return out


def gc_seconds(text: str) -> tuple[float, int]:
    """(seconds in cycle collections, full collections) so far; zeros if not exported."""
    seconds = sum(float(metric_value(text, "vmgated_gc_pause_seconds_total", generation=str(g))
                        or 0) for g in range(3))
    full = int(metric_value(text, "vmgated_gc_collections_total", generation="2") or 0)
    return seconds, full


def big_decks(directory: Path, cfg: Path, prefixes: int) -> None:
    """Replace the tenant's three decks with generated `prefixes`-code decks (one per plan)."""
    from bench.gen_deck import make_deck

    text = cfg.read_text()
    for n, name in enumerate(("retail-a", "client-std", "reseller-alpha")):
        deck = directory / f"{name}-{prefixes}.csv"
        deck.write_text(make_deck(prefixes, seed=20261122 + n))
        text = re.sub(rf"deck: \S*/{name}\.csv", f"deck: {deck}", text)
    cfg.write_text(text)


def counters(text: str) -> tuple[int, int, int]:
    """(kernel drops, non-ok hep packets, ledger queue depth) from one exposition."""
    drops = int(float(metric_value(text, "vmgated_udp_receive_errors_total") or 0))
    bad = 0
    for line in text.splitlines():
        if line.startswith("vmgated_packets_total{") and 'result="ok"' not in line:
            bad += int(float(line.rpartition(" ")[2]))
    depth = int(float(metric_value(text, "vmgated_ledger_queue_depth") or 0))
    return drops, bad, depth


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of values."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    """Run the daemon rates, the raw baseline, and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="10000,20000,40000,60000,80000,120000")
    ap.add_argument("--seconds", type=float, default=5.0, help="traffic per rate")
    ap.add_argument("--profile", help="py-spy record the daemon into this directory")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw uvloop baseline")
    ap.add_argument("--reload-at", type=float, default=0.0,
                    help="`vmgatectl reload` this many seconds into each rate's send")
    ap.add_argument("--deck-prefixes", type=int, default=0,
                    help="price with three generated decks of this many prefixes each")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]

    results = []
    with tempfile.TemporaryDirectory(prefix="vmgated-e2e-") as tmp:
        d = Path(tmp)
        hep_port, metrics_port = free_port(), free_port(socket.SOCK_STREAM)
        cfg = write_config(d, hep_port=hep_port, metrics_port=metrics_port, capture_id=101)
        if args.deck_prefixes:
            big_decks(d, cfg, args.deck_prefixes)
        daemon = Vmgated(cfg).start(timeout=120)
        assert daemon.proc is not None
        spy = None
        poller = CommitPoller(d / "var" / "ledger.db")
        try:
            if args.profile:
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking",
                     "-r", "200", "-f", "raw", "-o", str(Path(args.profile) / "profile.txt"),
                     "--pid", str(daemon.proc.pid)], stdout=subprocess.DEVNULL)
            poller.start()
            for n, rate in enumerate(rates):
                text = scrape(metrics_port)
                before, gc_before = counters(text), gc_seconds(text)
                cpu_before = cpu_seconds(daemon.proc.pid)
                kids_before = children_cpu(daemon.proc.pid)
                reload: dict[str, Any] = {}
                if args.reload_at:
                    def do_reload(out: dict[str, Any] = reload) -> None:
                        t = time.monotonic()
                        done = daemon.ctl("reload", check=False)
                        out["seconds"] = time.monotonic() - t
                        out["said"] = (done.stdout + done.stderr).strip().splitlines()[:1]
                    # The sender spends ~2 s building its stream before the first packet.
                    timer = threading.Timer(2.0 + args.reload_at, do_reload)
                    timer.start()
                res = run_sender(hep_port, rate, args.seconds, f"r{n}z")
                if args.reload_at:
                    timer.join()
                ids = set(res["bye_times"])
                # Drained: every call in, or 3 s without progress and an empty ledger queue.
                # (/metrics is scraped only then: a scrape walks every active dialog.)
                last, still = -1, time.monotonic()
                while True:
                    got = poller.count(ids)
                    if got == len(ids):
                        break
                    if got != last:
                        last, still = got, time.monotonic()
                    elif time.monotonic() - still > 3:
                        if not counters(scrape(metrics_port))[2]:
                            break
                        still = time.monotonic()
                    time.sleep(0.2)
                text = scrape(metrics_port)
                after, gc_after = counters(text), gc_seconds(text)
                # The daemon's CPU over the run and its drain (idle until the sender has built
                # its stream), against the sender's own CPU while it sent.
                cpu = cpu_seconds(daemon.proc.pid) - cpu_before
                kids = {k: v - kids_before.get(k, 0.0)
                        for k, v in children_cpu(daemon.proc.pid).items()}
                gc_max = float(metric_value(text, "vmgated_gc_pause_max_seconds") or 0)
                lat = [poller.seen[c] - t for c, t in res["bye_times"].items()
                       if c in poller.seen]
                results.append({
                    "rate": rate, "sent": res["packets"],
                    "achieved": res["packets"] / res["elapsed"], "calls": len(ids),
                    "billed": poller.count(ids), "drops": after[0] - before[0],
                    "bad": after[1] - before[1],
                    "gc": gc_after[0] - gc_before[0], "gc_full": gc_after[1] - gc_before[1],
                    "gc_max": gc_max, "cpu_us": cpu / res["packets"] * 1e6,
                    "cores": cpu / res["elapsed"], "sender_cores": res["cpu"] / res["elapsed"],
                    "ingest_cores": kids["ingest"] / res["elapsed"],
                    "writer_cores": kids["writer"] / res["elapsed"],
                    "p50": pct(lat, 0.5) * 1000 if lat else float("nan"),
                    "p99": pct(lat, 0.99) * 1000 if lat else float("nan"),
                })
                r = results[-1]
                print(f"rate {rate}: sent {r['sent']} at {r['achieved']:,.0f}/s, calls "
                      f"{r['billed']}/{r['calls']}, kernel drops {r['drops']}, non-ok {r['bad']},"
                      f" BYE→commit p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms, in GC "
                      f"{r['gc']:.2f} s ({r['gc_full']} full; longest pause so far "
                      f"{r['gc_max'] * 1000:.0f} ms); daemon CPU {r['cpu_us']:.1f} µs/packet "
                      f"({r['cores']:.2f} cores over the send), ingest process "
                      f"{r['ingest_cores']:.2f} cores, write process {r['writer_cores']:.2f} "
                      f"cores, sender {r['sender_cores']:.2f} cores"
                      + (f"; reload: {reload.get('said')} in {reload['seconds']:.2f} s"
                         if reload else ""),
                      flush=True)
        finally:
            poller.stop_flag.set()
            if spy is not None:
                spy.send_signal(2)
                spy.wait(timeout=60)
            daemon.stop()
            if poller.is_alive():
                poller.join(timeout=5)
        # A sanity check that the billed rows are correct, not just present.
        conn = connect_ro(d / "var" / "ledger.db")
        bs = conn.execute("SELECT customer, client, billsec, c_unrated IS NULL, COUNT(*) "
                          "FROM calls GROUP BY 1, 2, 3, 4").fetchall()
        conn.close()
    raw = [] if args.no_raw else raw_baseline(rates, args.seconds)

    print()
    print("| offered HEP packets/s | achieved | packets | calls billed / sent | kernel drops "
          "| non-ok | zero loss | BYE→commit p50 ms | p99 ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: | ---: |")
    best = 0
    for r in results:
        ok = r["billed"] == r["calls"] and r["drops"] == 0 and r["bad"] == 0
        if ok:
            best = max(best, round(r["achieved"]))
        print(f"| {r['rate']:,} | {r['achieved']:,.0f} | {r['sent']:,} | {r['billed']:,} / "
              f"{r['calls']:,} | {r['drops']} | {r['bad']} | {'yes' if ok else 'NO'} | "
              f"{r['p50']:.1f} | {r['p99']:.1f} |")
    print(f"\nledger rows (customer, client, billsec, customer leg rated, count): {bs}")
    print(f"highest zero-loss rate (achieved): {best:,} HEP packets/s")
    if raw:
        print("\n| raw uvloop counter, offered | achieved | sent | received | lost |")
        print("| --- | ---: | ---: | ---: | ---: |")
        ceiling = 0.0
        for label, sent, got, achieved in raw:
            print(f"| {label} | {achieved:,.0f} | {sent:,} | {got:,} | {sent - got:,} |")
            if got == sent:
                ceiling = max(ceiling, achieved)
        print(f"raw uvloop ceiling (highest zero-loss achieved rate): {ceiling:,.0f} packets/s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--send":
        p, rate, secs, prefix, out, raw_n = sys.argv[2:8]
        send(int(p), int(rate), float(secs), prefix, out, int(raw_n))
    elif len(sys.argv) > 1 and sys.argv[1] == "--raw-recv":
        raw_receiver(sys.argv[2])
    else:
        main()
