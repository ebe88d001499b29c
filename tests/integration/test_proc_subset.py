"""What the daemon reads from /proc, under the /proc the shipped unit gives it.

systemd/vmgated.service sets `ProcSubset=pid`: systemd mounts a /proc (`subset=pid`) that
holds the process directories and `self`, nothing else — no /proc/net, no /proc/stat. Each
test runs its check in a child process with such a /proc mounted in a private mount
namespace (`unshare`, root: CI runs as root, as the interface tests also need).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

_SANDBOX = "mount -t proc -o subset=pid proc /proc && exec \"$0\" -c \"$1\""


def _under_proc_subset_pid(code: str) -> str:
    prologue = (
        "import os\n"
        "assert not os.path.exists('/proc/net') and not os.path.exists('/proc/stat'), "
        "'not the sandbox these tests mean'\n"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _SANDBOX,
         sys.executable, prologue + code],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kernel_drops_are_read() -> None:
    """vmgated_udp_receive_errors_total read 0 here whatever the kernel dropped."""
    out = _under_proc_subset_pid(
        "import json, socket\n"
        "from vmgated.procnet import UdpDropCounter, socket_inode, udp_drops\n"
        "sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n"
        "sock.bind(('127.0.0.1', 0))\n"
        "with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:\n"
        "    for _ in range(500):\n"
        "        s.sendto(b'z' * 1000, sock.getsockname())\n"
        "counter = UdpDropCounter()\n"
        "drops = counter.read({socket_inode(sock)})\n"
        "print(json.dumps([drops, udp_drops(inodes={socket_inode(sock)}), counter.readable]))\n"
    )
    drops, by_function, readable = json.loads(out)
    assert drops > 0
    assert by_function == drops
    assert readable is True


def test_process_metrics_are_exported() -> None:
    """prometheus_client's collector needs /proc/stat for the boot time; without it, it
    exported no process_* series at all (process_resident_memory_bytes among them)."""
    before = time.time()
    out = _under_proc_subset_pid(
        "from vmgated.metrics import Counters, MetricsCollector\n"
        "print(MetricsCollector(Counters()).render().decode())\n"
    )
    values = {
        line.split()[0]: float(line.split()[1])
        for line in out.splitlines()
        if line.startswith("process_")
    }
    assert values["process_resident_memory_bytes"] > 1 << 20
    assert values["process_cpu_seconds_total"] > 0
    assert values["process_open_fds"] >= 3
    # The child started after `before` and ended before now; clock ticks are 1/100 s.
    assert before - 1 <= values["process_start_time_seconds"] <= time.time() + 1
