"""App.reload's own rules, with the config swap replaced: one reload at a time, the old config
released off the loop, the collector paused while a reload builds."""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path

from vmgated.app import App
from vmgated.config import load_config

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

        async def swap() -> list[object]:
            events.append(("enter", gc.isenabled()))
            await asyncio.sleep(0.05)  # a second reload would enter here without the lock
            events.append(("leave", gc.isenabled()))
            return [Old()]

        app._swap_config = swap  # type: ignore[method-assign]
        assert await asyncio.gather(app.reload(), app.reload()) == ["reloaded", "reloaded"]
        assert gc.isenabled()
        assert released_on and released_on[0] != threading.main_thread().name
        return events

    events = asyncio.run(main())
    assert events == [("enter", False), ("leave", False)] * 2
