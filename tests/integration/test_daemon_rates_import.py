"""SPEC §8 `vmgatectl rates import FILE --plan P`: validated, plan-locked, atomic, reloaded."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from otheruser import CLERK, DAEMON_GID, vmgatectl_as
from sipcalls import BASE, Call, S, make_env

from rating.units import format_time

HEADER = ("code,description,valid_since,valid_until,rate_per_min,connection_fee,"
          "connection_sec,billing_block_sec\n")
SINCE = "2026-01-01T00:00:00Z"
ROWS = (f",Rest of world,{SINCE},,0.9000,,60,60\n1,USA/Canada,{SINCE},,0.0058,,60,60\n"
        f"1202,USA Washington DC,{SINCE},,0.0055,,60,60\n")


def test_rates_import(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    deck = env.deck("retail-a.csv")
    try:
        original = deck.read_text()
        env.send(Call("history"))
        env.wait_calls(1)

        bad = tmp_path / "bad.csv"
        bad.write_text(HEADER + ROWS + f"1203,USA X,{SINCE},,-1,,60,60\n")
        out = env.ctl("rates", "import", str(bad), "--plan", "retail-a", check=False)
        assert out.returncode == 1 and f"{bad}:5: rate_per_min" in out.stderr, out.stderr

        locked = tmp_path / "locked.csv"
        locked.write_text(HEADER + ROWS.replace("0.0055", "0.0050"))
        out = env.ctl("rates", "import", str(locked), "--plan", "retail-a", check=False)
        assert out.returncode == 1, out.stdout
        assert f"{locked}:4: rate_per_min: plan 'retail-a': code '1202'" in out.stderr
        # Not "these rows priced calls": a row that priced nothing is fixed as well.
        assert f"{locked} was not imported (plan lock: a plan with call history keeps its " \
               "rows):" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        assert deck.read_text() == original

        out = env.ctl("rates", "import", str(bad), "--plan", "nope", check=False)
        assert out.returncode == 1 and "retail-a" in out.stderr

        later = format_time(BASE + 100 * S)
        good = tmp_path / "good.csv"
        # Every row of the running deck kept (the plan has history), one later row added.
        good.write_text(original + f"1202,USA Washington DC (2),{later},,0.0200,,60,60\n")
        result = json.loads(env.ctl("rates", "import", str(good), "--plan", "retail-a",
                                    "--json").stdout)
        rows = len(good.read_text().splitlines()) - 1
        assert result == {"plan": "retail-a", "deck": str(deck), "rows": rows,
                          "reload": "reloaded"}
        assert deck.read_text() == good.read_text()
        assert [p.name for p in deck.parent.iterdir() if p.name.startswith(".")] == []
        t = BASE + 200 * S
        env.send(Call("after-import", start=t, answer=t + S, end=t + 61 * S))
        env.wait_calls(2)
        after = next(c for c in env.calls() if c["call_id"] == "after-import")
        assert after["legs"]["customer"]["amount"] == "0.020000"

        env.daemon.stop()
        cheaper = tmp_path / "cheaper.csv"
        cheaper.write_text(good.read_text() + f"1203,USA X,{SINCE},,0.0040,,60,60\n")
        out = env.ctl("rates", "import", str(cheaper), "--plan", "retail-a")
        assert f"{rows + 1} rows" in out.stdout and "daemon not running" in out.stdout
        assert deck.read_text() == cheaper.read_text()
        env.restart()
        assert env.ctl_json("status")["active_calls"] == 0
    finally:
        env.daemon.stop()


@pytest.fixture
def shared_conf() -> Iterator[Path]:
    """The example config in a directory other users can reach (pytest's tmp is 0700), its
    decks owned root:DAEMON_GID 0640 in a group-writable directory, as an operator sets up
    /etc/vmgated for the daemon's user and a clerks' group."""
    top = Path(tempfile.mkdtemp(prefix="vmgated-import-"))
    try:
        top.chmod(0o755)
        shutil.copytree(ROOT / "conf", top / "conf", ignore=shutil.ignore_patterns("var"))
        for path in [top / "conf", *(top / "conf").rglob("*")]:
            os.chown(path, 0, DAEMON_GID)
            path.chmod(0o2770 if path.is_dir() else 0o640)
        yield top / "conf"
    finally:
        shutil.rmtree(top)


ROOT = Path(__file__).resolve().parents[2]
OUTSIDER = 41003


def test_an_import_keeps_the_decks_group_and_mode(shared_conf: Path) -> None:
    """A clerk's umask and primary group used to end up on the new deck (0600 clerk:clerk):
    the daemon, reading through the group, then refused the reload and failed its next start."""
    deck = shared_conf / "decks" / "retail-a.csv"
    new = shared_conf.parent / "new.csv"
    new.write_text(deck.read_text() + f"4420999,UK test,{SINCE},,0.0500,,0,1\n")
    new.chmod(0o644)
    config = str(shared_conf / "vmgated.yaml")

    out = vmgatectl_as(CLERK, [DAEMON_GID], "--config", config, "rates", "import", str(new),
                    "--plan", "retail-a")
    assert out.returncode == 0, out.stderr
    st = deck.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (DAEMON_GID, 0o640)
    assert deck.read_text() == new.read_text()
    # The daemon's user (another member of the group) still reads the whole config.
    out = vmgatectl_as(41004, [DAEMON_GID], "--config", config, "check")
    assert out.returncode == 0, out.stdout + out.stderr

    # A clerk who left the group but still owns the deck (from an earlier import) cannot
    # give a new file that group: nothing is replaced, no temporary file is left.
    for path in [shared_conf, *shared_conf.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o005)  # the rest of the config readable to all
    (shared_conf / "decks").chmod(0o777)  # no setgid: new files take the creator's group
    os.chown(deck, OUTSIDER, DAEMON_GID)
    deck.chmod(0o640)
    before = deck.read_text()
    out = vmgatectl_as(OUTSIDER, [], "--config", config, "rates", "import", str(new),
                    "--plan", "retail-a")
    assert out.returncode == 1, out.stdout
    assert f"{deck} was not replaced: it belongs to group" in out.stderr, out.stderr
    assert "which this user is not in" in out.stderr
    assert deck.read_text() == before
    assert [p.name for p in deck.parent.iterdir() if p.name.startswith(".")] == []
