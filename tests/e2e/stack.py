"""Real-SIP test harness: a Kamailio proxy with siptrace, sipp endpoints and a HEP recorder.

Everything runs on loopback (127.0.0.0/8) on free ports. Each process is started with
`subprocess.Popen` in its own session and working directory, its output kept in a log file
there, and stopped (SIGTERM, wait, SIGKILL of its whole process group) when its context exits.
A failure to start raises `HarnessError` carrying the tail of the process log; a context that
exits on an exception writes that tail to stderr so pytest shows it beside the failure.

Typical use, the shape of SPEC §3.1 (trunk 127.0.0.11 → proxy 127.0.0.1 → gateway 127.0.0.21):

    with HepRecorder("127.0.0.1") as hep, \\
         sipp_uas("127.0.0.21", free_udp_port("127.0.0.21"), workdir=d / "uas") as uas, \\
         Kamailio(listen=("127.0.0.1", free_udp_port("127.0.0.1")), hep_to=hep.address,
                  relay_to=uas.address, capture_id=7, workdir=d / "kamailio") as kam:
        result = sipp_uac(kam.address, local_host="127.0.0.11",
                          local_port=free_udp_port("127.0.0.11"), calls=1, workdir=d / "uac")
        hep.wait_quiet()
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
KAMAILIO_TEMPLATE = HERE / "kamailio.cfg.tmpl"

# The three roles of SPEC §4 on distinct loopback addresses, so attribution by address is testable.
TRUNK_HOST = "127.0.0.11"  # sipp UAC: the customer trunk
PROXY_HOST = "127.0.0.1"  # Kamailio
GATEWAY_HOST = "127.0.0.21"  # sipp UAS: the VMGateClient gateway

LOG_TAIL_LINES = 60


_S = TypeVar("_S", bound="_Service")


class Endpoint(NamedTuple):
    """A UDP address on loopback: ip text and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class HarnessError(RuntimeError):
    """A harness process failed to start, died early or overran its time limit."""


def _require_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host!r}: the e2e harness only binds loopback addresses (127.0.0.0/8)")


def _find_binary(name: str, *fallbacks: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    raise HarnessError(
        f"{name}: not found on PATH; install Debian's kamailio and sip-tester "
        "(apt-get install -y kamailio sip-tester)"
    )


def kamailio_binary() -> str:
    """Path of the kamailio executable (`/usr/sbin` is often missing from a user's PATH)."""
    return _find_binary("kamailio", "/usr/sbin/kamailio", "/usr/local/sbin/kamailio")


def sipp_binary() -> str:
    """Path of the sipp executable (Debian package `sip-tester`)."""
    return _find_binary("sipp", "/usr/bin/sipp", "/usr/local/bin/sipp")


def kamailio_modules_dir() -> Path:
    """Kamailio's module directory: `$KAMAILIO_MODULES`, else the Debian multiarch path."""
    env = os.environ.get("KAMAILIO_MODULES")
    candidates = [Path(env)] if env else []
    candidates += sorted(Path("/usr/lib").glob("*/kamailio/modules"))
    candidates += [Path("/usr/lib/kamailio/modules"), Path("/usr/local/lib64/kamailio/modules")]
    for path in candidates:
        if (path / "siptrace.so").is_file():
            return path
    raise HarnessError(
        "kamailio modules: no directory with siptrace.so found; set KAMAILIO_MODULES"
    )


def free_udp_port(host: str = PROXY_HOST, *, attempts: int = 20) -> int:
    """A UDP port that was free on `host` a moment ago.

    The port is released before the caller binds it, so another process may take it in
    between; callers that start a server on it should retry on a bind failure (the harness
    classes report such a failure as `HarnessError` with the log). Ports the kernel hands out
    are checked by binding them again, so a port only free on a wildcard address is skipped.
    """
    _require_loopback(host)
    last_error: OSError | None = None
    for _ in range(attempts):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((host, 0))
                port: int = probe.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as check:
                check.bind((host, port))
            return port
        except OSError as exc:  # raced with another binder: try another port
            last_error = exc
    raise HarnessError(f"no free UDP port on {host} after {attempts} attempts: {last_error}")


def udp_listening(endpoint: Endpoint, owners: set[int] | None = None) -> bool:
    """Whether a socket is bound to exactly `endpoint` (read from /proc/net/udp).

    With `owners`, the socket must also be held by one of those pids: a port taken by
    another process must not pass for a server that failed to bind it.
    """
    packed = socket.inet_aton(endpoint.host)
    wanted = f"{struct.unpack('<I', packed)[0]:08X}:{endpoint.port:04X}"
    with open("/proc/net/udp", encoding="ascii") as table:
        next(table)
        inodes = {fields[9] for fields in map(str.split, table) if fields[1] == wanted}
    if owners is None or not inodes:
        return bool(inodes)
    links = {f"socket:[{inode}]" for inode in inodes}
    for pid in owners:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    if os.readlink(fd) in links:
                        return True
    return False


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a dead process nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_group(pgid: int) -> set[int]:
    """Live pids whose process group is `pgid` (the harness starts each process as a leader)."""
    members: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.add(int(entry.name))
    return members


def _wait_until(predicate: object, timeout: float, interval: float = 0.02) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class ManagedProcess:
    """One child process in its own session, logging to `<workdir>/<name>.log`.

    `stop()` sends SIGTERM to the leader, waits, then SIGKILLs the whole process group so
    forked workers (Kamailio's children) cannot outlive the harness.
    """

    def __init__(self, name: str, argv: Sequence[str], workdir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self._popen: subprocess.Popen[bytes] | None = None
        self.pids_seen: set[int] = set()

    @property
    def pid(self) -> int:
        """The leader's pid (also the process group id)."""
        return self.popen.pid

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        """The running `Popen`; raises if `start()` was not called."""
        if self._popen is None:
            raise HarnessError(f"{self.name}: not started")
        return self._popen

    def start(self) -> None:
        """Start the process with stdin closed and stdout+stderr in the log file."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pids_seen.add(self._popen.pid)

    def running(self) -> bool:
        """Whether the leader has not exited yet."""
        return self._popen is not None and self._popen.poll() is None

    def note_group(self) -> set[int]:
        """Record and return the live members of the process group (for leak checks)."""
        members = process_group(self.pid) if self.running() else set()
        self.pids_seen |= members
        return members

    def wait(self, timeout: float) -> int:
        """Wait for the leader to exit; `HarnessError` (with the log) past `timeout` seconds."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"{self.name}: still running after {timeout:g} s\n{self.log_tail()}"
            ) from None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM → wait `timeout` → SIGKILL the group; returns the leader's exit status."""
        if self._popen is None:
            return None
        self.note_group()
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._popen.pid, signal.SIGKILL)
                self._popen.wait(timeout)
        # Workers the leader failed to reap on its way out.
        leftovers = process_group(self._popen.pid)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            _wait_until(lambda: not any(pid_alive(p) for p in leftovers), timeout)
        return self._popen.returncode

    def log_text(self) -> str:
        """The whole log, decoded leniently."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the log, headed by its path."""
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- {self.log_path} (last {lines} lines) ---\n{tail}"


class _Workdir:
    """A working directory: the caller's (kept), or a temp dir removed after a clean exit."""

    def __init__(self, given: Path | None, prefix: str) -> None:
        self.owned = given is None
        self.path = Path(tempfile.mkdtemp(prefix=prefix)) if given is None else Path(given)
        self.path.mkdir(parents=True, exist_ok=True)

    def close(self, failed: bool) -> None:
        if self.owned and not failed:
            shutil.rmtree(self.path, ignore_errors=True)


class _Service:
    """Context-manager plumbing shared by the long-running processes."""

    process: ManagedProcess
    _workdir: _Workdir

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.process.stop()
            self._workdir.close(failed=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.process.stop()
        failed = exc_type is not None
        if failed and not isinstance(exc, HarnessError):
            print(self.process.log_tail(), file=sys.stderr)
        self._workdir.close(failed)

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def pids(self) -> set[int]:
        """Every pid this service ran (leader and workers seen so far)."""
        self.process.note_group()
        return set(self.process.pids_seen)

    def _wait_listening(self, endpoint: Endpoint, timeout: float) -> None:
        process = self.process
        ready = _wait_until(
            lambda: not process.running() or udp_listening(endpoint, process_group(process.pid)),
            timeout,
        )
        if not process.running():
            raise HarnessError(
                f"{process.name}: exited with status {process.popen.returncode} before "
                f"listening on udp {endpoint}\n{process.log_tail()}"
            )
        if not ready:
            raise HarnessError(
                f"{process.name}: not listening on udp {endpoint} after {timeout:g} s\n"
                f"{process.log_tail()}"
            )


class Kamailio(_Service):
    """Kamailio as a stateful proxy relaying every request to one gateway, with siptrace HEP.

    The config is `kamailio.cfg.tmpl` rendered with these arguments (SPEC §3.1): siptrace
    duplicates every traced message to `hep_to` as HEP `hep_version` with `capture_id`;
    `trace_mode` "t" traces requests and replies of each transaction.
    """

    def __init__(
        self,
        *,
        listen: tuple[str, int],
        hep_to: tuple[str, int],
        relay_to: tuple[str, int],
        capture_id: int = 1,
        hep_version: int = 3,
        trace_mode: str = "t",
        workdir: Path | None = None,
        start_timeout: float = 10.0,
        debug: int = 2,
    ) -> None:
        for host, _ in (listen, hep_to, relay_to):
            _require_loopback(host)
        if hep_version not in (1, 2, 3):
            raise ValueError(f"hep_version={hep_version}: kamailio siptrace speaks HEP 1, 2 or 3")
        self.address = Endpoint(*listen)
        self.hep_to = Endpoint(*hep_to)
        self.relay_to = Endpoint(*relay_to)
        self.capture_id = capture_id
        self.hep_version = hep_version
        self.trace_mode = trace_mode
        self.debug = debug
        self.start_timeout = start_timeout
        self._workdir = _Workdir(workdir, "kamailio-")
        self.workdir = self._workdir.path
        self.config_path = self.workdir / "kamailio.cfg"
        self.pid_path = self.workdir / "kamailio.pid"
        self.process = ManagedProcess("kamailio", self.argv(), self.workdir)

    def render(self) -> str:
        """The config text for these arguments; fails on any placeholder left unfilled."""
        values = {
            "DEBUG": str(self.debug),
            "LISTEN_HOST": self.address.host,
            "LISTEN_PORT": str(self.address.port),
            "MODULES_DIR": f"{kamailio_modules_dir()}/",
            "HEP_HOST": self.hep_to.host,
            "HEP_PORT": str(self.hep_to.port),
            "HEP_VERSION": str(self.hep_version),
            "CAPTURE_ID": str(self.capture_id),
            "TRACE_MODE": self.trace_mode,
            "RELAY_HOST": self.relay_to.host,
            "RELAY_PORT": str(self.relay_to.port),
        }
        text = KAMAILIO_TEMPLATE.read_text()
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        if "{{" in text:
            start = text.index("{{")
            raise HarnessError(
                f"{KAMAILIO_TEMPLATE}: placeholder {text[start : text.index('}}', start) + 2]} "
                "has no value in Kamailio.render()"
            )
        return text

    def argv(self) -> list[str]:
        """The command line: foreground creator (-DD), log to stderr, everything in workdir.

        Running as root needs no -u/-g; -m/-M keep shared/private memory small.
        """
        return [
            kamailio_binary(),
            "-DD",
            "-E",
            "-f", str(self.config_path),
            "-w", str(self.workdir),
            "-Y", str(self.workdir),
            "-P", str(self.pid_path),
            "-m", "32",
            "-M", "4",
        ]  # fmt: skip

    def start(self) -> None:
        """Render the config, start Kamailio and wait until its UDP listener is bound."""
        self.config_path.write_text(self.render())
        self.process.start()
        self._wait_listening(self.address, self.start_timeout)
        # The worker processes exist once the listener is bound (bound before the fork).
        _wait_until(lambda: len(self.process.note_group()) > 1, 2.0)


@dataclass(frozen=True)
class SippResult:
    """The outcome of a sipp UAC run, from its exit status and its `-trace_stat` file."""

    returncode: int
    created: int
    successful: int
    failed: int
    stat_path: Path
    log_path: Path

    @property
    def ok(self) -> bool:
        """sipp exits 0 only when every call succeeded."""
        return self.returncode == 0 and self.failed == 0


def _scenario_args(scenario: str | Path) -> list[str]:
    """`-sn NAME` for sipp's built-in scenarios, `-sf FILE` for a file (bare names are looked
    up in tests/e2e/scenarios, with or without the .xml suffix)."""
    builtin = {
        "uac",
        "uas",
        "regexp",
        "3pcc-C-A",
        "3pcc-C-B",
        "3pcc-A",
        "3pcc-B",
        "branchc",
        "branchs",
        "uac_pcap",
    }
    if isinstance(scenario, str) and scenario in builtin:
        return ["-sn", scenario]
    path = Path(scenario)
    if not path.is_file():
        named = SCENARIOS / (path.name if path.suffix == ".xml" else f"{path.name}.xml")
        if not named.is_file():
            raise HarnessError(
                f"sipp scenario {scenario!r}: neither a built-in ({', '.join(sorted(builtin))}) "
                f"nor a file; scenarios live in {SCENARIOS}"
            )
        path = named
    return ["-sf", str(path)]


class Sipp(_Service):
    """One sipp process (UAS or UAC) with stat and error traces in its working directory."""

    def __init__(
        self,
        name: str,
        *,
        local: tuple[str, int],
        scenario: str | Path,
        remote: tuple[str, int] | None = None,
        workdir: Path | None = None,
        options: Sequence[str] = (),
        start_timeout: float = 10.0,
    ) -> None:
        _require_loopback(local[0])
        if remote is not None:
            _require_loopback(remote[0])
        self.address = Endpoint(*local)
        self.remote = None if remote is None else Endpoint(*remote)
        self.start_timeout = start_timeout
        self._workdir = _Workdir(workdir, f"sipp-{name}-")
        self.workdir = self._workdir.path
        self.stat_path = self.workdir / f"{name}_stat.csv"
        self.error_path = self.workdir / f"{name}_errors.log"
        argv = [
            sipp_binary(),
            *_scenario_args(scenario),
            "-i", self.address.host,
            "-p", str(self.address.port),
            "-nostdin",
            "-trace_stat", "-stf", str(self.stat_path),
            "-trace_err", "-error_file", str(self.error_path),
            *options,
        ]  # fmt: skip
        if self.remote is not None:
            argv.append(str(self.remote))
        self.process = ManagedProcess(name, argv, self.workdir)

    def start(self) -> None:
        """Start sipp and wait until its SIP socket is bound."""
        self.process.start()
        if self.remote is None:
            self._wait_listening(self.address, self.start_timeout)

    def wait(self, timeout: float = 60.0) -> SippResult:
        """Wait for sipp to finish its calls and return what it reports."""
        returncode = self.process.wait(timeout)
        return self.result(returncode)

    def result(self, returncode: int) -> SippResult:
        """Counts from the last row of the stat file (cumulative columns)."""
        created = successful = failed = 0
        with contextlib.suppress(FileNotFoundError):
            rows = [r for r in self.stat_path.read_text().splitlines() if r.strip()]
            if len(rows) >= 2:
                header = rows[0].split(";")
                last = rows[-1].split(";")
                column = {name: last[i] for i, name in enumerate(header) if i < len(last)}
                created = int(column.get("TotalCallCreated", "0") or 0)
                successful = int(column.get("SuccessfulCall(C)", "0") or 0)
                failed = int(column.get("FailedCall(C)", "0") or 0)
        return SippResult(
            returncode, created, successful, failed, self.stat_path, self.process.log_path
        )

    def errors(self) -> str:
        """The `-trace_err` log (unexpected messages, retransmission timeouts)."""
        try:
            return self.error_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def sipp_uas(
    host: str,
    port: int,
    scenario: str | Path = "uas",
    *,
    workdir: Path | None = None,
    extra: Sequence[str] = (),
) -> Sipp:
    """A sipp UAS (the gateway) on host:port; use as a context manager, it runs until exit."""
    return Sipp("uas", local=(host, port), scenario=scenario, workdir=workdir, options=extra)


def sipp_uac_process(
    target: tuple[str, int],
    *,
    local_host: str = TRUNK_HOST,
    local_port: int | None = None,
    calls: int = 1,
    rate: float = 1.0,
    duration_ms: int = 1000,
    scenario: str | Path | None = None,
    service: str = "service",
    workdir: Path | None = None,
    extra: Sequence[str] = (),
    name: str = "uac",
) -> Sipp:
    """A sipp UAC placing `calls` calls at `rate` calls/s, each `duration_ms` long, to
    `target`; use as a context manager and `wait()` for its result (or stop it early)."""
    port = free_udp_port(local_host) if local_port is None else local_port
    options = [
        "-s", service,
        "-d", str(duration_ms),
        "-r", f"{rate:g}",
        "-m", str(calls),
        *extra,
    ]  # fmt: skip
    return Sipp(
        name,
        local=(local_host, port),
        scenario=scenario or "uac",
        remote=target,
        workdir=workdir,
        options=options,
    )


def sipp_uac(
    target: tuple[str, int],
    *,
    local_host: str = TRUNK_HOST,
    local_port: int | None = None,
    calls: int = 1,
    rate: float = 1.0,
    duration_ms: int = 1000,
    scenario: str | Path | None = None,
    service: str = "service",
    workdir: Path | None = None,
    extra: Sequence[str] = (),
    timeout: float | None = None,
) -> SippResult:
    """Run a sipp UAC in the foreground to completion (see `sipp_uac_process`).

    The default `timeout` allows the calls' spread, their duration and a margin.
    """
    if timeout is None:  # scenarios may pause twice (re-INVITE); the UAS may ring for 3 s
        timeout = calls / rate + 2 * duration_ms / 1000 + 15.0
    uac = sipp_uac_process(
        target,
        local_host=local_host,
        local_port=local_port,
        calls=calls,
        rate=rate,
        duration_ms=duration_ms,
        scenario=scenario,
        service=service,
        workdir=workdir,
        extra=extra,
    )
    with uac:
        return uac.wait(timeout)


class ScenarioPair(NamedTuple):
    """A UAS and a UAC scenario that work together, with what Kamailio traces per call."""

    uas: str
    uac: str
    sip_code: int  # final reply to the initial INVITE
    per_call: tuple[tuple[str, int], ...]  # SIP label → HEP packets per call (trace mode "t")

    def expected(self, calls: int) -> Counter[str]:
        """HEP packets Kamailio sends for `calls` calls without retransmissions, by label."""
        return Counter({label: n * calls for label, n in self.per_call})


# Observed with Debian kamailio 5.6.3 and sipp 3.6.1 (tests/data/README.md has the detail).
# The proxy traces a request as received and as relayed, a reply as received and as relayed,
# its own 100 once, the gateway's 100 once (absorbed), the ACK to a 2xx once (relayed outside
# the transaction), and for a negative reply both its own ACK to the gateway and the caller's
# ACK it absorbs.
SCENARIO_PAIRS: dict[str, ScenarioPair] = {
    "answered": ScenarioPair(
        "uas", "uac", 200,
        (("INVITE", 2), ("100", 1), ("180", 2), ("200", 4), ("ACK", 1), ("BYE", 2)),
    ),
    "busy": ScenarioPair(
        "uas_busy", "uac_rejected", 486,
        (("INVITE", 2), ("100", 2), ("486", 2), ("ACK", 2)),
    ),
    "noanswer": ScenarioPair(
        "uas_noanswer", "uac_rejected", 480,
        (("INVITE", 2), ("100", 1), ("180", 2), ("480", 2), ("ACK", 2)),
    ),
    "cancel": ScenarioPair(
        "uas_noanswer", "uac_cancel", 487,
        (("INVITE", 2), ("100", 1), ("180", 2), ("CANCEL", 2), ("200", 2), ("487", 2),
         ("ACK", 2)),
    ),
    "reinvite": ScenarioPair(
        "uas_reinvite", "uac_reinvite", 200,
        (("INVITE", 4), ("100", 2), ("180", 2), ("200", 6), ("ACK", 2), ("BYE", 2)),
    ),
}  # fmt: skip


class SipStack:
    """A sipp UAS (gateway) behind a Kamailio proxy, plus a HEP recorder unless `hep_to`
    names another HEP receiver (a live vmgated). Calls are placed with `call()`.

    Ports are picked free and retried when another process takes one first.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        uas_scenario: str | Path = "uas",
        hep_to: tuple[str, int] | None = None,
        capture_id: int = 1,
        hep_version: int = 3,
        trace_mode: str = "t",
        trunk_host: str = TRUNK_HOST,
        proxy_host: str = PROXY_HOST,
        gateway_host: str = GATEWAY_HOST,
        start_attempts: int = 3,
    ) -> None:
        self.workdir = Path(workdir)
        self.uas_scenario = uas_scenario
        self.capture_id = capture_id
        self.hep_version = hep_version
        self.trace_mode = trace_mode
        self.trunk_host = trunk_host
        self.proxy_host = proxy_host
        self.gateway_host = gateway_host
        self.start_attempts = start_attempts
        self._hep_to = None if hep_to is None else Endpoint(*hep_to)
        self._stack = contextlib.ExitStack()
        self._uac_runs = 0
        self.hep: HepRecorder | None = None
        self._uas: Sipp | None = None
        self._kamailio: Kamailio | None = None

    @property
    def uas(self) -> Sipp:
        """The running gateway sipp."""
        if self._uas is None:
            raise HarnessError("SipStack: not started")
        return self._uas

    @property
    def kamailio(self) -> Kamailio:
        """The running proxy."""
        if self._kamailio is None:
            raise HarnessError("SipStack: not started")
        return self._kamailio

    @property
    def recorder(self) -> HepRecorder:
        """The stack's own HEP recorder (absent when `hep_to` was given)."""
        if self.hep is None:
            raise HarnessError("SipStack: HEP goes to an external receiver, not a recorder")
        return self.hep

    def _retry(self, start: Callable[[], _S]) -> _S:
        for attempt in range(1, self.start_attempts + 1):
            service = start()
            try:
                self._stack.enter_context(service)
            except HarnessError:
                if attempt == self.start_attempts:
                    raise
            else:
                return service
        raise AssertionError("unreachable")

    def __enter__(self) -> Self:
        try:
            if self._hep_to is None:
                self.hep = self._stack.enter_context(HepRecorder(self.proxy_host))
                self._hep_to = self.hep.address
            hep_to = self._hep_to
            self._uas = self._retry(
                lambda: sipp_uas(
                    self.gateway_host,
                    free_udp_port(self.gateway_host),
                    self.uas_scenario,
                    workdir=self.workdir / "uas",
                )
            )
            relay_to = self._uas.address
            self._kamailio = self._retry(
                lambda: Kamailio(
                    listen=(self.proxy_host, free_udp_port(self.proxy_host)),
                    hep_to=hep_to,
                    relay_to=relay_to,
                    capture_id=self.capture_id,
                    hep_version=self.hep_version,
                    trace_mode=self.trace_mode,
                    workdir=self.workdir / "kamailio",
                )
            )
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.__exit__(*exc_info)  # type: ignore[arg-type]

    def _uac_dir(self) -> Path:
        self._uac_runs += 1
        return self.workdir / f"uac{self._uac_runs}"

    def uac_process(self, **kwargs: Any) -> Sipp:
        """A background UAC towards the proxy (see `sipp_uac_process`); enter it yourself."""
        kwargs.setdefault("local_host", self.trunk_host)
        kwargs.setdefault("workdir", self._uac_dir())
        return sipp_uac_process(self.kamailio.address, **kwargs)

    def call(self, **kwargs: Any) -> SippResult:
        """Place calls through the proxy and wait for sipp to finish (see `sipp_uac`)."""
        kwargs.setdefault("local_host", self.trunk_host)
        kwargs.setdefault("workdir", self._uac_dir())
        return sipp_uac(self.kamailio.address, **kwargs)

    @property
    def pids(self) -> set[int]:
        """Every pid of the proxy and the gateway seen so far."""
        return self.kamailio.pids | self.uas.pids


SipStackFactory = Callable[..., SipStack]  # conftest's sip_stack_factory fixture


class HepPacket(NamedTuple):
    """One received datagram, its sender and when it arrived (EpochUs, the receive clock)."""

    data: bytes
    source: Endpoint
    received_us: int


class HepRecorder:
    """Collects every UDP datagram sent to host:port in a background thread.

    With port 0 the kernel picks a free port (no race); read it from `.address`.
    """

    def __init__(self, host: str = PROXY_HOST, port: int = 0) -> None:
        _require_loopback(host)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind((host, port))
        self._sock.settimeout(0.05)
        self.address = Endpoint(host, self._sock.getsockname()[1])
        self._packets: list[HepPacket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"hep-recorder-{self.address}", daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread and close the socket (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            packet = HepPacket(data, Endpoint(*source), time.time_ns() // 1000)
            with self._lock:
                self._packets.append(packet)
            self._received(packet)

    def _received(self, packet: HepPacket) -> None:
        """Hook run in the receive thread after a datagram is recorded (HepTee forwards)."""

    @property
    def packets(self) -> list[HepPacket]:
        """A snapshot of the datagrams received so far, in arrival order."""
        with self._lock:
            return list(self._packets)

    def clear(self) -> None:
        """Forget what was received so far."""
        with self._lock:
            self._packets.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least `count` datagrams arrived; False on timeout."""
        return _wait_until(lambda: len(self._packets) >= count, timeout)

    def wait_quiet(self, quiet: float = 0.5, timeout: float = 10.0) -> int:
        """Wait until nothing arrived for `quiet` seconds; returns the packet count."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                last = self._packets[-1].received_us if self._packets else None
            idle = 0.0 if last is None else time.time() - last / 1e6
            if last is not None and idle >= quiet:
                break
            time.sleep(max(0.02, quiet - idle))
        return len(self._packets)

    def save(self, path: Path) -> int:
        """Write the raw datagrams back to back; returns the byte count.

        HEPv3 carries its total length in bytes 4–5, so the file splits back into datagrams.
        HEPv1/v2 does not: use `save_pcap` for those.
        """
        data = b"".join(p.data for p in self.packets)
        Path(path).write_bytes(data)
        return len(data)

    def save_pcap(self, path: Path) -> int:
        """Write the datagrams as a classic pcap (Ethernet/IPv4/UDP, µs stamps = receive time,
        sender → recorder address); returns the byte count."""
        out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        dst = socket.inet_aton(self.address.host)
        for packet in self.packets:
            udp = (
                struct.pack("!HHHH", packet.source.port, self.address.port, 8 + len(packet.data), 0)
                + packet.data
            )
            ip = bytearray(
                struct.pack(
                    "!BBHHHBBH4s4s",
                    0x45,
                    0,
                    20 + len(udp),
                    0,
                    0x4000,
                    64,
                    socket.IPPROTO_UDP,
                    0,
                    socket.inet_aton(packet.source.host),
                    dst,
                )
            )
            checksum = _ip_checksum(bytes(ip))
            ip[10:12] = struct.pack("!H", checksum)
            frame = b"\x00" * 12 + b"\x08\x00" + bytes(ip) + udp
            sec, usec = divmod(packet.received_us, 1_000_000)
            out += struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame
        Path(path).write_bytes(out)
        return len(out)


def _ip_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def split_hep3(stream: bytes) -> Iterator[bytes]:
    """Split back-to-back HEPv3 datagrams using the length in bytes 4–5 of each.

    For the harness's own checks only; the real decoder is sip/hep.py.
    """
    offset = 0
    while offset < len(stream):
        if stream[offset : offset + 4] != b"HEP3" or offset + 6 > len(stream):
            raise ValueError(f"offset {offset}: not a HEP3 header")
        length = int.from_bytes(stream[offset + 4 : offset + 6], "big")
        if length < 6 or offset + length > len(stream):
            raise ValueError(f"offset {offset}: HEP3 length {length} runs past the end")
        yield stream[offset : offset + length]
        offset += length


def hep3_chunks(datagram: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(vendor id, chunk type, value) of each chunk of one HEPv3 datagram (harness checks)."""
    offset = 6
    while offset < len(datagram):
        vendor, ctype, length = struct.unpack_from("!HHH", datagram, offset)
        if length < 6 or offset + length > len(datagram):
            raise ValueError(f"offset {offset}: chunk length {length} out of bounds")
        yield vendor, ctype, datagram[offset + 6 : offset + length]
        offset += length


def sip_first_line(datagram: bytes) -> str:
    """The SIP start line carried by a HEP datagram (v3 payload chunk 0x000f, or any version
    by searching for a SIP start line), e.g. "INVITE sip:service@…" or "SIP/2.0 200 OK"."""
    payload = datagram
    if datagram[:4] == b"HEP3":
        for vendor, ctype, value in hep3_chunks(datagram):
            if vendor == 0 and ctype == 0x000F:
                payload = value
                break
    else:
        methods = (
            b"INVITE ",
            b"ACK ",
            b"BYE ",
            b"CANCEL ",
            b"OPTIONS ",
            b"UPDATE ",
            b"PRACK ",
            b"INFO ",
            b"SIP/2.0 ",
        )
        starts = [i for m in methods if (i := datagram.find(m)) >= 0]
        payload = datagram[min(starts) :] if starts else datagram
    return payload.split(b"\r\n", 1)[0].decode("utf-8", "replace")


def sip_label(datagram: bytes) -> str:
    """Short label of the SIP message: the method ("INVITE") or the status code ("180")."""
    line = sip_first_line(datagram)
    if line.startswith("SIP/2.0 "):
        return line.split()[1]
    return line.split(" ", 1)[0]


def hep3_summary(datagram: bytes) -> str:
    """One line per HEPv3 datagram: "src → dst LABEL" (for logs and the captures' README)."""
    fields: dict[int, bytes] = {
        ctype: value for vendor, ctype, value in hep3_chunks(datagram) if vendor == 0
    }
    src = socket.inet_ntoa(fields[0x03]) if 0x03 in fields else "?"
    dst = socket.inet_ntoa(fields[0x04]) if 0x04 in fields else "?"
    sport = int.from_bytes(fields.get(0x07, b""), "big")
    dport = int.from_bytes(fields.get(0x08, b""), "big")
    return f"{src}:{sport} → {dst}:{dport} {sip_label(datagram)}"


class HepTee(HepRecorder):
    """A HepRecorder that also forwards every datagram, unchanged, to `forward_to` (vmgated).

    Kamailio traces to the tee; the test keeps its own copy of every HEP datagram the daemon
    was sent, so expected call times come from the capture and not from the daemon's parser.
    Datagrams are recorded before they are forwarded; while the receiver is down (a kill -9
    test) they are still recorded and the forward simply goes nowhere, as it would from
    Kamailio.
    """

    def __init__(self, forward_to: tuple[str, int], host: str = PROXY_HOST, port: int = 0) -> None:
        super().__init__(host, port)
        self.forward_to = Endpoint(*forward_to)
        self.forward_errors = 0

    def _received(self, packet: HepPacket) -> None:
        try:
            self._sock.sendto(packet.data, self.forward_to)
        except OSError:  # ICMP port unreachable reported on a later send: receiver restarting
            self.forward_errors += 1


# -- call times from a capture, independently of vmgated's own SIP code -----------------------

_CALL_ID_RE = re.compile(rb"^(?:Call-ID|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_CSEQ_RE = re.compile(rb"^CSeq[ \t]*:[ \t]*(\d+)[ \t]+([A-Za-z]+)", re.IGNORECASE | re.MULTILINE)


class HepSip(NamedTuple):
    """The few fields of one HEPv3 datagram the e2e checks need."""

    ts_us: int  # capture time: timestamp chunks 0x0009 (s) and 0x000a (µs)
    call_id: str
    label: str  # method ("INVITE") or status code ("200")
    cseq_method: str


def hep3_sip(datagram: bytes) -> HepSip:
    """Timestamp, Call-ID, label and CSeq method of one HEPv3 datagram carrying SIP."""
    sec = usec = None
    payload = b""
    for vendor, ctype, value in hep3_chunks(datagram):
        if vendor != 0:
            continue
        if ctype == 0x0009:
            sec = int.from_bytes(value, "big")
        elif ctype == 0x000A:
            usec = int.from_bytes(value, "big")
        elif ctype == 0x000F:
            payload = value
    if sec is None or usec is None:
        raise ValueError("HEP3 datagram without its timestamp chunks")
    call_id = _CALL_ID_RE.search(payload)
    cseq = _CSEQ_RE.search(payload)
    if call_id is None or cseq is None:
        raise ValueError(f"SIP without Call-ID or CSeq: {payload[:80]!r}")
    return HepSip(sec * 1_000_000 + usec, call_id.group(1).decode(), sip_label(datagram),
                  cseq.group(2).decode().upper())


def hep2_sip(datagram: bytes) -> HepSip:
    """The same fields from a HEPv2 datagram (IPv4): 16-byte header, then a little-endian
    time header (seconds, microseconds, capture id, pad) and the SIP payload."""
    if datagram[:4] != b"\x02\x10\x02\x11":
        raise ValueError(f"not an IPv4/UDP HEPv2 datagram: {datagram[:4]!r}")
    sec, usec = struct.unpack_from("<II", datagram, 16)
    payload = datagram[28:]
    call_id = _CALL_ID_RE.search(payload)
    cseq = _CSEQ_RE.search(payload)
    if call_id is None or cseq is None:
        raise ValueError(f"SIP without Call-ID or CSeq: {payload[:80]!r}")
    return HepSip(sec * 1_000_000 + usec, call_id.group(1).decode(), sip_label(datagram),
                  cseq.group(2).decode().upper())


class CallTimes(NamedTuple):
    """One call as the capture shows it (SPEC §4): EpochUs times and the final code."""

    call_id: str
    start: int  # first INVITE
    final: int | None  # first final response to the INVITE
    final_at: int | None
    answer: int | None  # first 2xx to the INVITE
    end: int | None  # first BYE

    @property
    def billsec(self) -> int:
        """ceil(end − answer) in whole seconds, integer arithmetic; 0 when unanswered."""
        if self.answer is None or self.end is None:
            return 0
        return -(-(self.end - self.answer) // 1_000_000)


def call_times(datagrams: Iterable[bytes]) -> dict[str, CallTimes]:
    """Call-ID → CallTimes from HEPv3 (or v2) datagrams in any order (earliest capture time
    wins)."""
    by_call: dict[str, list[HepSip]] = {}
    for datagram in datagrams:
        msg = hep3_sip(datagram) if datagram[:4] == b"HEP3" else hep2_sip(datagram)
        by_call.setdefault(msg.call_id, []).append(msg)
    out: dict[str, CallTimes] = {}
    for call_id, msgs in by_call.items():
        msgs.sort(key=lambda m: m.ts_us)
        invites = [m.ts_us for m in msgs if m.label == "INVITE"]
        finals = [m for m in msgs if m.cseq_method == "INVITE" and m.label.isdigit()
                  and int(m.label) >= 200]
        answers = [m.ts_us for m in finals if m.label.startswith("2")]
        byes = [m.ts_us for m in msgs if m.label == "BYE"]
        out[call_id] = CallTimes(
            call_id,
            invites[0],
            int(finals[0].label) if finals else None,
            finals[0].ts_us if finals else None,
            answers[0] if answers else None,
            byes[0] if byes else None,
        )
    return out


def wait_call_times(
    recorder: HepRecorder, calls: int, timeout: float = 15.0, quiet: float = 0.3
) -> dict[str, CallTimes]:
    """Wait until the capture holds `calls` calls, each with its final response and, when
    answered, its BYE; then let the trailing replies arrive and return the call times.

    A condition on content, not only a quiet period: a loaded machine can pause a Kamailio
    worker for longer than any quiet period a test would wait.
    """

    def complete() -> dict[str, CallTimes] | None:
        times = call_times(p.data for p in recorder.packets)
        done = len(times) >= calls and all(
            t.final is not None and (t.answer is None or t.end is not None)
            for t in times.values()
        )
        return times if done else None

    if not _wait_until(lambda: complete() is not None, timeout, interval=0.1):
        raise HarnessError(
            f"capture incomplete after {timeout} s: want {calls} finished calls, have "
            f"{call_times(p.data for p in recorder.packets)}"
        )
    recorder.wait_quiet(quiet)
    return call_times(p.data for p in recorder.packets)
