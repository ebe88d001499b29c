"""`vmgated --config PATH`: run the daemon in the foreground (systemd Type=notify)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

DEFAULT_CONFIG = "/etc/vmgated/vmgated.yaml"
_reload_asked: list[int] = []  # SIGHUPs that came before the daemon was ready


def _remember_reload(signum: int, frame: FrameType | None) -> None:
    _reload_asked.append(signum)


def config_path(arg: str | None) -> Path:
    """--config, else $VMGATED_CONFIG, else /etc/vmgated/vmgated.yaml (SPEC §8)."""
    return Path(arg or os.environ.get("VMGATED_CONFIG") or DEFAULT_CONFIG)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the config and run the daemon until SIGTERM."""
    # First thing: SIGHUP's default action is to end the process, and a start can take
    # seconds (decks, a journal replay after kill -9). A reload asked meanwhile is carried
    # out once the daemon is ready instead of killing it.
    signal.signal(signal.SIGHUP, _remember_reload)
    parser = argparse.ArgumentParser(prog="vmgated", description="SIP edge billing daemon")
    parser.add_argument("--config", help=f"YAML config (default $VMGATED_CONFIG, {DEFAULT_CONFIG})")
    parser.add_argument("--log-level", default=os.environ.get("VMGATED_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    from vmgated import systemd

    handler = logging.StreamHandler(sys.stderr)
    # journald adds its own timestamps; keep lines short and greppable. Under the journal,
    # each line carries its priority (`journalctl -p warning` works).
    fmt = "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(
        systemd.JournalFormatter(fmt) if systemd.journal_stderr() else logging.Formatter(fmt)
    )
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    from vmgated.app import run  # imported late: --help must not need uvloop

    return run(config_path(args.config), lambda: bool(_reload_asked))


if __name__ == "__main__":
    sys.exit(main())
