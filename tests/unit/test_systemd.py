"""SPEC §8 / issue 5 part 3: sd_notify without libsystemd, and the hardened unit file."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmgated import systemd
from vmgated.config import load_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "vmgated.service"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def _recv(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_ready_reaches_the_notify_socket(notify_socket: socket.socket) -> None:
    assert systemd.ready("listening on 127.0.0.1:9060")
    assert _recv(notify_socket) == {"READY": "1", "STATUS": "listening on 127.0.0.1:9060"}


def test_reloading_carries_monotonic_usec(notify_socket: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    state = _recv(notify_socket)
    assert state["RELOADING"] == "1"
    assert before <= int(state["MONOTONIC_USEC"]) <= after


def test_stopping_status_and_watchdog(notify_socket: socket.socket) -> None:
    assert systemd.stopping()
    assert _recv(notify_socket) == {"STOPPING": "1"}
    assert systemd.status("draining\n3 calls")  # a status is one line: newlines flattened
    assert _recv(notify_socket) == {"STATUS": "draining 3 calls"}
    assert systemd.watchdog_ping()
    assert _recv(notify_socket) == {"WATCHDOG": "1"}


def test_abstract_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"vmgated-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready()
        assert sock.recv(100) == b"READY=1"


def test_without_systemd_every_call_is_a_quiet_no_op(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.notify("READY=1") is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert systemd.watchdog_interval() is None


# --- the unit file ---------------------------------------------------------------------------


def _unit_directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify on a copy whose ExecStart is this venv's real vmgated script."""
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    binary = Path(sys.executable).parent / "vmgated"
    assert binary.exists(), f"{binary}: the project must be installed in the test venv"
    unit = tmp_path / "vmgated.service"
    unit.write_text(text.replace("/usr/local/bin/vmgated", str(binary)))
    return subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = _verify(tmp_path, UNIT.read_text())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Unknown" not in output and "ignoring" not in output, output
    assert output.strip() == "", output


def test_verify_would_catch_an_unknown_directive(tmp_path: Path) -> None:
    # Proves the check above is meaningful: verify reports what a typo would silently ignore.
    typo = UNIT.read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=3\n")
    result = _verify(tmp_path, typo)
    assert "Unknown key" in result.stdout + result.stderr


def test_unit_is_a_hardened_notify_service() -> None:
    d = _unit_directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["ExecStart"] == ["/usr/local/bin/vmgated --config /etc/vmgated/vmgated.yaml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Environment"] == ["VMGATED_CONFIG=/etc/vmgated/vmgated.yaml"]
    assert d["WatchdogSec"] == ["30"]
    assert d["Restart"] == ["on-failure"]
    assert d["User"] == ["vmgated"]
    for key in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert d[key] == ["vmgated"], key
    assert d["ProtectSystem"] == ["strict"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["CapabilityBoundingSet"] == [""]  # no capability at all
    assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX AF_NETLINK"]
    assert "@system-service" in d["SystemCallFilter"]
    assert d["MemoryDenyWriteExecute"] == ["yes"]


def test_sysusers_declares_the_service_user() -> None:
    lines = [line.split() for line in (ROOT / "systemd" / "vmgated.sysusers").read_text()
             .splitlines() if line.strip() and not line.startswith("#")]
    assert lines and lines[0][:2] == ["u", "vmgated"]


MDWE_PROBE = textwrap.dedent("""
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        sys.exit("PR_SET_MDWE unsupported: errno %d" % ctypes.get_errno())
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("W^X not enforced")
    except OSError:
        pass
    import asyncio, sqlite3, socket, uvloop
    from vmgated.listeners import UdpListener
    from vmgated.metrics import Counters, MetricsCollector
    from vmgated.netwatch import resolve

    async def main():
        got = asyncio.get_running_loop().create_future()
        listener = UdpListener("127.0.0.1", 0, got.set_result)
        await listener.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"HEP3", listener.sockname)
        batch = await asyncio.wait_for(got, 5)
        listener.stop()
        lo = await asyncio.to_thread(resolve, "lo")
        sqlite3.connect(":memory:").execute("create table t(x)")
        MetricsCollector(Counters()).render()
        cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
        print(batch[0][0].decode(), "127.0.0.1" in lo, cb(1))

    uvloop.run(main())
""")


def test_daemon_stack_runs_under_memory_deny_write_execute() -> None:
    # MemoryDenyWriteExecute=yes in the unit: run the same stack under the kernel's W^X rule.
    result = subprocess.run([sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["HEP3", "True", "2"]


SOCKET_UNIT = ROOT / "systemd" / "vmgated.socket"


def test_socket_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify needs the service it activates beside it.
    binary = Path(sys.executable).parent / "vmgated"
    service = UNIT.read_text().replace("/usr/local/bin/vmgated", str(binary))
    (tmp_path / "vmgated.service").write_text(service)
    unit = tmp_path / "vmgated.socket"
    unit.write_text(SOCKET_UNIT.read_text())
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and output.strip() == "", output


def test_socket_unit_listens_where_the_example_config_does() -> None:
    config = load_config(ROOT / "conf" / "vmgated.yaml")
    wanted = {f"{s.address}:{s.port}" for s in (*config.listen.hep, *config.listen.cdr)}
    assert set(_unit_directives(SOCKET_UNIT.read_text())["ListenDatagram"]) == wanted


def test_log_lines_carry_their_journal_priority() -> None:
    fmt = systemd.JournalFormatter("%(levelname)s %(name)s: %(message)s")

    def line(level: int, msg: str) -> str:
        return fmt.format(logging.LogRecord("vmgated", level, __file__, 1, msg, None, None))

    assert line(logging.ERROR, "cannot start") == "<3>ERROR vmgated: cannot start"
    assert line(logging.WARNING, "dropped") == "<4>WARNING vmgated: dropped"
    assert line(logging.INFO, "ready") == "<6>INFO vmgated: ready"
    assert line(logging.DEBUG, "x") == "<7>DEBUG vmgated: x"
    assert line(logging.CRITICAL, "x").startswith("<2>")
    # journald stores every line as an entry of its own: each keeps the message's priority.
    assert line(logging.ERROR, "a\nb") == "<3>ERROR vmgated: a\n<3>b"


def test_stderr_is_the_journal_only_when_journal_stream_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert systemd.journal_stderr()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # redirected stderr
    assert not systemd.journal_stderr()
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not systemd.journal_stderr()
