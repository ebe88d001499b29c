"""A real vmgated process for end-to-end tests: its own config, state dir and free ports.

The daemon runs as `python -m vmgated.main` from the interpreter running the tests, so the
tests exercise exactly what the README installs. Nothing is mocked: the HEP socket, the
control socket, the HTTP scrape and the SQLite file are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DECKS = ROOT / "conf" / "decks"


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (tests retry on the rare race)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_config(
    directory: Path,
    *,
    hep_port: int,
    metrics_port: int,
    cdr_port: int | None = None,
    trunk_host: str = "127.0.0.11",
    client_host: str = "127.0.0.21",
    capture_id: int = 2001,
    auth_key: str | None = None,
    allowed: tuple[str, ...] = ("127.0.0.0/8",),
    extra: str = "",
    hep6_port: int | None = None,
) -> Path:
    """A small tenant: one customer trunk at trunk_host, one reseller client at client_host.

    `hep6_port` adds a second HEP listener on ::1 (IPv6 loopback).
    """
    cdr = f"[{{address: 127.0.0.1, port: {cdr_port}}}]" if cdr_port else "[]"
    key = "null" if auth_key is None else json.dumps(auth_key)
    hep = f"{{address: 127.0.0.1, port: {hep_port}}}"
    if hep6_port is not None:
        hep += f', {{address: "::1", port: {hep6_port}}}'
    sources = ", ".join(json.dumps(a) for a in allowed)  # quoted: "::1/128" starts with ':'
    text = f"""
tenant: {{name: E2E Telecom, currency: USD}}
state_dir: ./var
listen:
  hep: [{hep}]
  cdr: {cdr}
  metrics: {{address: 127.0.0.1, port: {metrics_port}}}
  control: ./var/control.sock
security:
  hep_auth_key: {key}
  allowed_sources: [{sources}]
calls: {{max_duration: 3h}}
subscription:
  plan: Business
  limits: {{vmgateclients: 50, concurrent_ports: 200, networks: 3}}
  seat_packs: [10]
networks: [{{id: yerevan-1, name: Yerevan 1}}]
resellers:
  - {{id: r-alpha, name: Alpha Gateways, company: Alpha LLC, email: ops@alpha.example,
     billing_type: postpaid, status: active, rate_plan: reseller-alpha}}
join_codes:
  - {{code: JX7Q-2K, network: yerevan-1, reseller: r-alpha}}
customers:
  - id: acme
    name: Acme Carrier
    billing_type: prepaid
    trunks:
      - {{id: acme-1, addresses: ["{trunk_host}"], rate_plan: retail-a, tech_prefix: ""}}
vmgateclients:
  - {{id: gw-01, name: GW 01, network: yerevan-1, join_code: JX7Q-2K,
     addresses: ["{client_host}"], capture_id: {capture_id}, rate_plan: client-std}}
rate_plans:
  - {{name: retail-a, scope: customer, currency: USD, deck: {DECKS / "retail-a.csv"}}}
  - {{name: client-std, scope: vmgateclient, currency: USD, deck: {DECKS / "client-std.csv"}}}
  - {{name: reseller-alpha, scope: reseller, currency: USD, deck: {DECKS / "reseller-alpha.csv"}}}
{extra}
"""
    path = directory / "vmgated.yaml"
    path.write_text(text)
    return path


class Vmgated:
    """A vmgated child process bound to one config file."""

    def __init__(self, config: Path, *, hep_port: int = 0, metrics_port: int = 0) -> None:
        self.config = config
        self.hep_port = hep_port  # as written in the config (0: unknown to the harness)
        self.metrics_port = metrics_port
        self.dir = config.parent
        self.log = self.dir / "vmgated.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env.pop("NOTIFY_SOCKET", None)

    def start(self, timeout: float = 20.0) -> Vmgated:
        """Start the daemon and wait until its control socket answers `status`."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vmgated.main", "--config", str(self.config)],
                cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vmgated exited {self.proc.returncode}:\n{self.logs()}")
            if self.ctl("status", check=False).returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"vmgated did not become ready:\n{self.logs()}")

    def logs(self) -> str:
        """The daemon's stderr so far (shown when a test fails)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `vmgatectl --config <cfg> ARGS` and return the completed process."""
        out = subprocess.run(
            [sys.executable, "-m", "vmgated.cli.main", "--config", str(self.config), *args],
            capture_output=True, text=True, env=self.env, timeout=120,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"vmgatectl {' '.join(args)} failed ({out.returncode}):\n"
                                 f"{out.stdout}\n{out.stderr}\n--- daemon log ---\n{self.logs()}")
        return out

    def ctl_json(self, *args: str) -> Any:
        """Run a vmgatectl listing with --json and decode it."""
        return json.loads(self.ctl(*args, "--json").stdout)

    def scrape(self, port: int) -> str:
        """GET /metrics over real HTTP."""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            return str(resp.read().decode())

    @property
    def hep_address(self) -> tuple[str, int]:
        """Where the daemon listens for HEP (IPv4)."""
        return ("127.0.0.1", self.hep_port)

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def ledger_path(self) -> Path:
        """The ledger file in the state dir (`state_dir: ./var` in write_config)."""
        return self.dir / "var" / "ledger.db"

    def metrics(self) -> str:
        """Scrape this daemon's own /metrics."""
        return self.scrape(self.metrics_port)

    def ledger_query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Run a read-only query on the real ledger file (SQLite opened with mode=ro)."""
        if not self.ledger_path.exists():
            return []
        con = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True, timeout=10)
        try:
            return list(con.execute(sql, params))
        finally:
            con.close()

    def wait_calls(self, count: int, timeout: float = 30.0) -> int:
        """Wait until the ledger holds at least `count` call rows; returns the count seen."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            seen = int(self.ledger_query("SELECT count(*) FROM calls")[0][0]) \
                if self.ledger_path.exists() else 0
            if seen >= count:
                return seen
            if not self.alive:
                raise AssertionError(f"vmgated died:\n{self.logs()}")
            time.sleep(0.2)
        return seen

    def calls(self) -> dict[str, dict[str, Any]]:
        """`vmgatectl calls --json` keyed by Call-ID; fails if a Call-ID is listed twice."""
        listing = self.ctl_json("calls", "--limit", "100000")
        out: dict[str, dict[str, Any]] = {}
        for call in listing:
            assert call["call_id"] not in out, f"call {call['call_id']} listed twice: {listing}"
            out[call["call_id"]] = call
        return out

    def close(self) -> None:
        """Teardown: SIGTERM and wait; SIGKILL whatever is still running."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.stop(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        """SIGKILL: no drain, no flush, no snapshot."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the drain; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def metric_value(text: str, name: str, **labels: str) -> str | None:
    """The sample text value of `name{labels}` in an exposition, exactly as written."""
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        got = dict(
            part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part
        )
        got = {k: v.strip('"') for k, v in got.items()}
        if all(got.get(k) == v for k, v in labels.items()):
            return value
    return None


def launch(directory: Path, attempts: int = 3, **config: Any) -> Vmgated:
    """Write a config with fresh free ports into `directory` and start vmgated on it.

    `config` goes to `write_config` (hep_port and metrics_port are picked here). A start that
    fails (a port taken between the pick and the bind) is retried with new ports.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        hep_port = free_port()
        metrics_port = free_port(socket.SOCK_STREAM)
        path = write_config(directory, hep_port=hep_port, metrics_port=metrics_port, **config)
        daemon = Vmgated(path, hep_port=hep_port, metrics_port=metrics_port)
        try:
            return daemon.start()
        except RuntimeError:
            daemon.close()
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def parse_rfc3339_us(text: str) -> int:
    """RFC 3339 UTC ('…Z', optional fraction) as EpochUs, with integer arithmetic only."""
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0), text
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    delta = stamp - epoch
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_rfc3339_us(us: int) -> str:
    """EpochUs as RFC 3339 UTC with microseconds (for `vmgatectl rate --at`)."""
    sec, usec = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{usec:06d}Z"


def metric_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], str]:
    """Every sample of `name`: sorted label pairs → value text."""
    out: dict[tuple[tuple[str, str], ...], str] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        pairs = [part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part]
        out[tuple(sorted((k, v.strip('"')) for k, v in pairs))] = value
    return out


def packet_counts(text: str) -> dict[tuple[str, str], int]:
    """vmgated_packets_total as (input, result) → count."""
    out: dict[tuple[str, str], int] = {}
    for labels, value in metric_samples(text, "vmgated_packets_total").items():
        d = dict(labels)
        out[(d["input"], d["result"])] = int(value)
    return out
