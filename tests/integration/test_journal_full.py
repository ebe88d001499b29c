"""A journal that cannot be written (disk full, file size limit) stays readable, and the daemon
bills what it could not journal instead of dropping it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmgated.app import App
from vmgated.config import load_config
from vmgated.journal import Journal

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    from vmgated.journal import HEP, Journal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG and short writes, not a kill
    journal = Journal(Path(sys.argv[1]))
    journal.recover()
    resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000))
    ok, failed = [], 0
    for i in range(40):
        payload = bytes([65 + i % 26]) * 300 + str(i).encode()
        try:
            journal.append(HEP, [(payload, ("127.0.0.1", 9060))] * 2)
            ok.append(i)
        except OSError:
            failed += 1
    print(json.dumps([ok, failed]))
""")


def test_a_short_write_is_undone_so_the_journal_stays_readable(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    ok, failed = json.loads(out.stdout)
    assert ok == list(range(len(ok))) and 3 <= len(ok) < 40 and failed == 40 - len(ok)
    # Exactly the batches whose append returned, whole and in order; the one cut short by the
    # limit left nothing behind (without the undo it is a torn record the replay stops at).
    entries = list(Journal(tmp_path).recover().entries())
    want = [bytes([65 + i % 26]) * 300 + str(i).encode() for i in ok for _ in range(2)]
    assert [e.payload for e in entries] == want
    journal_file = next((tmp_path / "dialogs").glob("journal.*"))
    assert journal_file.stat().st_size < 5000


class _FullJournal:
    def append(self, kind: int, batch: object) -> None:
        raise OSError(28, "No space left on device")


class _Pipeline:
    def __init__(self) -> None:
        self.fed: list[object] = []

    def feed_hep(self, batch: list[object]) -> None:
        self.fed.extend(batch)

    def feed_cdr(self, batch: list[object]) -> None:
        self.fed.extend(batch)


def test_a_batch_the_journal_cannot_take_is_billed_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config_path = ROOT / "conf" / "vmgated.yaml"
    app = App(config_path, load_config(config_path))
    app.journal = _FullJournal()  # type: ignore[assignment]
    pipeline = _Pipeline()
    app.pipeline = pipeline  # type: ignore[assignment]
    sender = ("127.0.0.1", 5060)
    with caplog.at_level(logging.ERROR, logger="vmgated"):
        app._on_hep([(b"HEP3-a", sender), (b"HEP3-b", sender)])
        app._on_cdr([(b"{}", sender)])
    assert pipeline.fed == [(b"HEP3-a", sender), (b"HEP3-b", sender), (b"{}", sender)]
    assert app.counters.packets[("journal", "write_error")] == 3
    errors = [r for r in caplog.records if "journal write failed" in r.getMessage()]
    assert len(errors) == 1 and "No space left on device" in errors[0].getMessage()
