"""vmgatectl: argument parsing and dispatch; the commands live in their own modules.

Each command module exposes `register(commands: Commands) -> None` and adds its commands
with `commands.add_parser(name, help=...)`, setting `func=handler` where a handler is
`handler(args: argparse.Namespace) -> int` (the exit code). `--config PATH` and `--json`
are accepted before or after the command name, on every command. `args.config` reaches the
handler already resolved (`--config`, else `$VMGATED_CONFIG`, else /etc/vmgated/vmgated.yaml).

Exit codes: 0 done, 1 refused (bad config, unknown trunk, daemon said no), 2 usage error.
A handler raises `CommandError` to refuse; nothing the user types may end in a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Any

PROG = "vmgatectl"
DEFAULT_CONFIG = "/etc/vmgated/vmgated.yaml"
# Offline commands (check, rate, rates) always; live ones (status, calls, pay, ...) when the
# module is present.
COMMAND_MODULES = ("vmgated.cli.offline", "vmgated.cli.live")

Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A refusal to print as `vmgatectl: error: MESSAGE` with exit code `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _common() -> argparse.ArgumentParser:
    # SUPPRESS defaults: a subcommand parser must not reset what was given before the
    # command name (argparse copies sub-parser defaults over the namespace).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"config file (default: $VMGATED_CONFIG, then {DEFAULT_CONFIG})",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="machine-readable output",
    )
    return common


class Commands:
    """The set of commands under one parser: what `register(commands)` receives."""

    def __init__(self, action: Any, common: argparse.ArgumentParser) -> None:
        self._action = action  # argparse._SubParsersAction (private type)
        self._common = common
        self._groups: dict[str, Commands] = {}

    def add_parser(
        self, name: str, *, help: str | None = None, **kwargs: Any
    ) -> argparse.ArgumentParser:
        """A new command `name` (same call as argparse's); it accepts --config and --json."""
        parser: argparse.ArgumentParser = self._action.add_parser(
            name,
            help=help,
            description=kwargs.pop("description", help),
            parents=[self._common],
            **kwargs,
        )
        return parser

    def group(self, name: str, *, help: str) -> Commands:
        """Commands under `name` (e.g. `rates list`, `ledger verify`); shared between modules,
        so `vmgated.cli.live` can add `rates import` next to `rates list`."""
        existing = self._groups.get(name)
        if existing is not None:
            return existing
        parser = self.add_parser(name, help=help)
        action = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
        group = Commands(action, self._common)
        self._groups[name] = group
        return group


def build_parser() -> argparse.ArgumentParser:
    """The full vmgatectl parser, with every available command module registered."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Billing clerk's and ops engineer's command line for vmgated.",
    )
    action = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = Commands(action, common)
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        module.register(commands)
    return parser


def config_path(given: str | None) -> str:
    """The config to use: --config, else $VMGATED_CONFIG, else the packaged default."""
    return given or os.environ.get("VMGATED_CONFIG") or DEFAULT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Run one vmgatectl command; returns the exit code (0, 1 refused, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    args.config = config_path(getattr(args, "config", None))
    args.json = bool(getattr(args, "json", False))
    handler: Handler | None = getattr(args, "func", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        return 2
    try:
        return handler(args)
    except CommandError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return exc.code
    except sqlite3.Error as exc:
        # A report reading the ledger file (vmgated's own refusals come as CommandError).
        print(f"{PROG}: error: reading the ledger: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `vmgatectl rates show ... | head`: the reader left, which is not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    # `python -m vmgated.cli.main` runs this file as `__main__`; dispatch through the
    # imported module so CommandError is the one class the command modules raise.
    from vmgated.cli import main as _module

    sys.exit(_module.main())
