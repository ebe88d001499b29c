"""Soak: sipp → Kamailio (siptrace HEPv3) → vmgated for a bounded time, sampled every 10 s.

    /work/venv/bin/python bench/soak.py [--minutes 10] [--rate 500] [--duration-ms 1000]
                                        [--out bench/soak] [--kamailio-shm 512]

A real vmgated (tenant of tests/e2e/daemon.py: trunk 127.0.0.11, client 127.0.0.21), Debian's
Kamailio 5.6 relaying to a sipp UAS and tracing every transaction to vmgated as HEPv3, and a
sipp UAC (`-sn uac -s 442071234567 -d DURATION -r RATE -m RATE*60*MINUTES`) on loopback
(tests/e2e/stack.py). Every `--every` seconds it samples vmgated's RSS and CPU, the ledger
queue depth (`vmgated_ledger_queue_depth`), kernel drops (`vmgated_udp_receive_errors_total`),
non-ok `vmgated_packets_total`, the calls in the ledger (read-only COUNT), sipp's successful
calls (its `-trace_stat` file, written every 10 s) and the machine's load average, into
OUT.csv, and plots OUT.png. At the end: sipp's successful calls vs answered calls billed,
and RSS growth after the warm-up (the first `--warmup` fraction of the run).
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ledger.reports import connect_ro  # noqa: E402
from tests.e2e.daemon import Vmgated, free_port, metric_value, write_config  # noqa: E402
from tests.e2e.stack import SipStack  # noqa: E402

NUMBER = "442071234567"
CAPTURE_ID = 2001
FIELDS = ("t_s", "rss_mb", "rss_anon_mb", "rss_file_mb", "rss_shmem_mb", "cpu_pct",
          "ingest_rss_mb", "ingest_cpu_pct", "queue_depth", "udp_drops", "non_ok_packets",
          "calls_in_ledger", "calls_per_s", "sipp_successful", "sipp_failed", "load1")


def rss_parts(pid: int) -> dict[str, float]:
    """RSS split as the kernel counts it: heap (anon), mapped files, shared memory (MB).

    The split tells a Python/SQLite heap that grows (anon) from SQLite's WAL index, which is
    a shared mapping of the `-shm` file and grows with the WAL (file/shmem).
    """
    parts = {"RssAnon": "rss_anon_mb", "RssFile": "rss_file_mb", "RssShmem": "rss_shmem_mb"}
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in parts:
                out[parts[key]] = round(int(value.split()[0]) / 1024, 1)
    return out


def scrape(port: int) -> str:
    """GET /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def metrics(text: str) -> tuple[int, int, int]:
    """(queue depth, kernel drops, non-ok packets) from one exposition."""
    depth = int(float(metric_value(text, "vmgated_ledger_queue_depth") or 0))
    drops = int(float(metric_value(text, "vmgated_udp_receive_errors_total") or 0))
    bad = 0
    for line in text.splitlines():
        if line.startswith("vmgated_packets_total{") and 'result="ok"' not in line:
            bad += int(float(line.rpartition(" ")[2]))
    return depth, drops, bad


def sipp_counts(stat: Path) -> tuple[int, int]:
    """(successful, failed) cumulative calls from the last row of sipp's stat file."""
    try:
        rows = [r for r in stat.read_text().splitlines() if r.strip()]
    except FileNotFoundError:
        return 0, 0
    if len(rows) < 2:
        return 0, 0
    head, last = rows[0].split(";"), rows[-1].split(";")
    col = dict(zip(head, last, strict=False))
    return int(col.get("SuccessfulCall(C)", 0) or 0), int(col.get("FailedCall(C)", 0) or 0)


def ledger_count(db: Path) -> int:
    """Calls committed so far (read-only)."""
    if not db.exists():
        return 0
    conn = connect_ro(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    finally:
        conn.close()


class Child:
    """The daemon's ingest process (vmgated/ingest.py), found again if it was replaced."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.proc: Any = None

    def sample(self) -> dict[str, float]:
        """Its RSS (MB) and CPU % since the last sample; empty when there is none."""
        try:
            if self.proc is None or not self.proc.is_running():
                self.proc = next(c for c in self.daemon.children()
                                 if "vmgated.ingest" in c.cmdline())
                self.proc.cpu_percent()
            return {"ingest_rss_mb": round(self.proc.memory_info().rss / 2**20, 1),
                    "ingest_cpu_pct": self.proc.cpu_percent()}
        except (StopIteration, psutil.Error):
            self.proc = None
            return {}


def plot(rows: list[dict[str, float]], out: Path, title: str) -> None:
    """Four panels over time: RSS, ledger queue depth, drops, calls/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # sipp rewrites its stat file every ~10 s, out of step with the samples (a per-sample
    # delta reads 250 then 1000): its rate is taken over a sliding 60 s window.
    for i, r in enumerate(rows):
        j = max(0, i - 6)
        if i > j:
            r["sipp_rate"] = ((r["sipp_successful"] - rows[j]["sipp_successful"])
                              / (r["t_s"] - rows[j]["t_s"]))
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    panels = [
        ("vmgated RSS (MB)", [("rss_mb", "RSS"), ("rss_anon_mb", "anon (heap)"),
                              ("rss_file_mb", "file"), ("rss_shmem_mb", "shmem"),
                              ("ingest_rss_mb", "ingest process RSS")]),
        ("ledger queue depth", [("queue_depth", "vmgated_ledger_queue_depth")]),
        ("drops (cumulative)", [("udp_drops", "kernel (udp_receive_errors)"),
                                ("non_ok_packets", "packets_total non-ok")]),
        ("calls/s", [("calls_per_s", "billed (ledger)"), ("sipp_rate", "sipp successful")]),
    ]
    for ax, (label, series) in zip(axes, panels, strict=True):
        for key, name in series:
            have = [r for r in rows if key in r]  # an older CSV lacks the RSS split
            if not have:
                continue
            xs = [r["t_s"] / 60 for r in have]
            ys = [r[key] for r in have]
            ax.plot(xs, ys, marker=".", label=name)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[1].set_ylim(bottom=0)
    axes[2].set_ylim(bottom=0, top=max(1.0, max(r["udp_drops"] + r["non_ok_packets"]
                                                 for r in rows) * 1.2))
    axes[-1].set_xlabel("minutes")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> None:
    """Run the soak and write OUT.csv and OUT.png."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=500.0, help="sipp calls/s")
    ap.add_argument("--duration-ms", type=int, default=1000, help="sipp -d (answered time)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction of the run")
    ap.add_argument("--kamailio-shm", type=int, default=512, help="Kamailio -m (MB)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "soak"))
    ap.add_argument("--replot", metavar="CSV", help="only redraw OUT.png from a CSV")
    ap.add_argument("--title", help="plot title for --replot")
    args = ap.parse_args()
    if args.replot:
        with open(args.replot, newline="") as f:
            old_rows = [{k: float(v) for k, v in r.items() if v != ""}
                        for r in csv.DictReader(f)]
        plot(old_rows, Path(args.out).with_suffix(".png"), args.title or (
            f"vmgated soak ({args.replot}): sipp {args.rate:g} calls/s, -d {args.duration_ms} "
            "via Kamailio 5.6 siptrace HEPv3; 2-core sandbox"))
        return
    # Stop cleanly (daemon, Kamailio, sipp) on SIGTERM, and on SIGINT even when started in
    # the background by a shell that ignores it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    calls = int(args.rate * args.minutes * 60)
    out = Path(args.out)

    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="vmgated-soak-") as tmp:
        d = Path(tmp)
        hep_port, metrics_port = free_port(), free_port(socket.SOCK_STREAM)
        cfg = write_config(d, hep_port=hep_port, metrics_port=metrics_port,
                           capture_id=CAPTURE_ID)
        daemon = Vmgated(cfg).start()
        assert daemon.proc is not None
        proc = psutil.Process(daemon.proc.pid)
        proc.cpu_percent()
        child = Child(proc)
        child.sample()
        db = d / "var" / "ledger.db"
        try:
            stack = SipStack(d / "sip", hep_to=("127.0.0.1", hep_port), capture_id=CAPTURE_ID)
            with stack:
                kam = stack.kamailio
                # The harness's 32 MB of shared memory holds ~1,000 transactions; a soak at
                # hundreds of calls/s keeps several thousand (wait timer) alive.
                argv = kam.process.argv
                if "-m" in argv:
                    argv[argv.index("-m") + 1] = str(args.kamailio_shm)
                    kam.process.stop()
                    kam.start()
                uac = stack.uac_process(calls=calls, rate=args.rate,
                                        duration_ms=args.duration_ms, service=NUMBER,
                                        extra=["-fd", "10", "-l", str(int(args.rate * 10))])
                with uac:
                    start = time.monotonic()
                    prev_calls, prev_t = 0, start
                    end_at = start + args.minutes * 60
                    while True:
                        time.sleep(max(0.0, start + (len(rows) + 1) * args.every
                                       - time.monotonic()))
                        now = time.monotonic()
                        depth, drops, bad = metrics(scrape(metrics_port))
                        n = ledger_count(db)
                        ok, failed = sipp_counts(uac.stat_path)
                        row = {
                            "t_s": round(now - start, 1),
                            "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                            "cpu_pct": proc.cpu_percent(),
                            "queue_depth": depth, "udp_drops": drops, "non_ok_packets": bad,
                            "calls_in_ledger": n,
                            "calls_per_s": round((n - prev_calls) / (now - prev_t), 1),
                            "sipp_successful": ok, "sipp_failed": failed,
                            "load1": os.getloadavg()[0],
                            **rss_parts(proc.pid),
                            **child.sample(),
                        }
                        prev_calls, prev_t = n, now
                        rows.append(row)
                        print(" ".join(f"{k}={row.get(k)}" for k in FIELDS), flush=True)
                        if now >= end_at or not uac.process.running():
                            break
                    result = uac.wait(timeout=60 + args.duration_ms / 1000)
                    errors = uac.errors().splitlines()
            # Kamailio stopped: every trace is sent; let the daemon drain and commit.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                depth = metrics(scrape(metrics_port))[0]
                if depth == 0 and ledger_count(db) >= result.successful:
                    break
                time.sleep(1)
            time.sleep(2)
            depth, drops, bad = metrics(scrape(metrics_port))
            rss_end = proc.memory_info().rss / 2**20
            conn = connect_ro(db)
            by_disp = conn.execute(
                "SELECT disposition, COUNT(*), SUM(billsec > 0), "
                "SUM(c_unrated IS NOT NULL) FROM calls GROUP BY disposition").fetchall()
            dup = conn.execute("SELECT COUNT(*) - COUNT(DISTINCT call_id) FROM calls").fetchone()
            conn.close()
        finally:
            daemon.stop()

    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    warm = [r for r in rows if r["t_s"] >= args.warmup * args.minutes * 60]
    rss = [r["rss_mb"] for r in warm] or [0.0]
    loads = [r["load1"] for r in rows]
    title = (f"vmgated soak {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: sipp "
             f"{args.rate:g} calls/s, -d {args.duration_ms} via Kamailio 5.6 siptrace HEPv3; "
             f"2-core sandbox")
    plot(rows, out.with_suffix(".png"), title)
    answered = sum(n for disp, n, *_ in by_disp if disp == "answered")
    print()
    print(f"sipp: created {result.created}, successful {result.successful}, failed "
          f"{result.failed}, exit {result.returncode}")
    print(f"sipp -trace_err: {len(errors)} lines; first: {errors[:4]}")
    print(f"ledger: {by_disp} (disposition, calls, billsec>0, customer-unrated); "
          f"duplicate Call-IDs {dup[0]}")
    total = sum(n for _, n, *_ in by_disp)
    print(f"calls in the ledger {total} vs sipp created {result.created}: "
          f"{'EQUAL' if total == result.created else 'DIFFERENT'}; answered billed {answered} "
          f"vs sipp successful {result.successful} (sipp counts a call it aborted after the "
          f"answer, e.g. on a retransmitted 180, as failed; it still sends BYE)")
    print(f"kernel drops {drops}, non-ok packets {bad}, final queue depth {depth}")
    print(f"RSS after warm-up ({warm[0]['t_s'] if warm else 0:.0f} s): first {rss[0]:.1f} MB, "
          f"min {min(rss):.1f}, max {max(rss):.1f}, last sample {rss[-1]:.1f}, after drain "
          f"{rss_end:.1f} MB (growth first→last {rss[-1] - rss[0]:+.1f} MB)")
    irss = [r["ingest_rss_mb"] for r in warm if "ingest_rss_mb" in r] or [0.0]
    icpu = [r["ingest_cpu_pct"] for r in rows if "ingest_cpu_pct" in r] or [0.0]
    print(f"ingest process RSS after warm-up: first {irss[0]:.1f} MB, min {min(irss):.1f}, "
          f"max {max(irss):.1f}, last {irss[-1]:.1f}; CPU mean {sum(icpu) / len(icpu):.0f}% "
          "of one core")
    print(f"vmgated CPU mean {sum(r['cpu_pct'] for r in rows) / len(rows):.0f}% of one core; "
          f"load average 1 min: min {min(loads):.2f} mean {sum(loads) / len(loads):.2f} "
          f"max {max(loads):.2f} (2 cores)")
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
