"""App.reload's own rules, with the config swap replaced: one reload at a time, the old config
released off the loop, the collector paused while a reload builds."""

from __future__ import annotations

import asyncio
import gc
import threading
from dataclasses import replace
from pathlib import Path

from vmgated.app import App
from vmgated.config import ListenSpec, keep_restart_only, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_reloads_run_one_at_a_time_with_the_collector_paused() -> None:
    config_path = ROOT / "conf" / "vmgated.yaml"

    async def main() -> list[tuple[str, bool]]:
        app = App(config_path, load_config(config_path))
        events: list[tuple[str, bool]] = []
        released_on: list[str] = []

        class Old:
            def __del__(self) -> None:
                released_on.append(threading.current_thread().name)

        async def swap() -> tuple[list[object], tuple[str, ...]]:
            events.append(("enter", gc.isenabled()))
            await asyncio.sleep(0.05)  # a second reload would enter here without the lock
            events.append(("leave", gc.isenabled()))
            return [Old()], ()

        app._swap_config = swap  # type: ignore[method-assign]
        assert await asyncio.gather(app.reload(), app.reload()) == ["reloaded", "reloaded"]
        assert gc.isenabled()
        assert released_on and released_on[0] != threading.main_thread().name
        return events

    events = asyncio.run(main())
    assert events == [("enter", False), ("leave", False)] * 2


def test_what_only_a_restart_applies_keeps_its_running_value_and_is_named() -> None:
    """A reload used to take a new listen port or state_dir into the running config without
    opening it: `vmgatectl status` showed sockets and a state dir the daemon was not using."""
    running = load_config(ROOT / "conf" / "vmgated.yaml")
    edited = replace(
        running,
        state_dir=Path("/elsewhere"),
        listen=replace(running.listen, hep=(ListenSpec("127.0.0.1", None, 9061),)),
        calls=replace(running.calls, max_duration_us=60_000_000),
    )
    kept, pending = keep_restart_only(running, edited)
    assert kept.state_dir == running.state_dir and kept.listen == running.listen
    assert kept.calls.max_duration_us == 60_000_000  # what a reload applies is taken
    assert pending == (
        "listen.hep: running 127.0.0.1:9060, the file says 127.0.0.1:9061",
        f"state_dir: running {running.state_dir}, the file says /elsewhere",
    )
    assert keep_restart_only(running, running) == (running, ())
