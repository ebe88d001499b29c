"""Fixtures for the real-SIP end-to-end tests, built on stack.py.

The fixtures are general: `sip_stack_factory` builds a gateway + Kamailio with any UAS
scenario and sends HEP either to its own recorder or to another receiver (a live vmgated
fixture beside these passes its HEP address as `hep_to`). Everything is stopped at teardown;
logs stay under the test's tmp_path and are printed when the test fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Vmgated, launch
from stack import (
    HarnessError,
    HepRecorder,
    SipStack,
    SipStackFactory,
    kamailio_binary,
    kamailio_modules_dir,
    sipp_binary,
)


@pytest.fixture(scope="session")
def sip_tools() -> dict[str, str]:
    """Paths of kamailio, its modules and sipp; fails (never skips) when they are missing."""
    try:
        return {
            "kamailio": kamailio_binary(),
            "modules": str(kamailio_modules_dir()),
            "sipp": sipp_binary(),
        }
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def hep_recorder() -> Iterator[HepRecorder]:
    """A HEP receiver on 127.0.0.1 at a kernel-chosen port, collecting every datagram."""
    with HepRecorder() as recorder:
        yield recorder


@pytest.fixture
def sip_stack_factory(sip_tools: dict[str, str], tmp_path: Path) -> Iterator[SipStackFactory]:
    """Build running `SipStack`s: `factory(uas_scenario="uas", hep_to=None, capture_id=1, ...)`.

    Each stack gets its own directory under tmp_path and is stopped at teardown.
    """
    with contextlib.ExitStack() as stacks:
        count = 0

        def factory(**kwargs: Any) -> SipStack:
            nonlocal count
            count += 1
            return stacks.enter_context(SipStack(tmp_path / f"stack{count}", **kwargs))

        yield factory


@pytest.fixture
def sip_stack(sip_stack_factory: SipStackFactory) -> SipStack:
    """Trunk 127.0.0.11 → Kamailio 127.0.0.1 → sipp's built-in UAS on 127.0.0.21, HEP to the
    stack's own recorder (`sip_stack.recorder`)."""
    return sip_stack_factory()


VmgatedFactory = Callable[..., Vmgated]


@pytest.fixture
def vmgated_factory(tmp_path: Path) -> Iterator[VmgatedFactory]:
    """Start live vmgated daemons: `factory(name="vmgated", **write_config kwargs)`.

    Each gets its own directory and free ports; all are stopped (SIGTERM, then SIGKILL) at
    teardown, and a daemon's log is printed when the test failed.
    """
    daemons: list[Vmgated] = []

    def factory(name: str = "vmgated", **config: Any) -> Vmgated:
        daemon = launch(tmp_path / name, **config)
        daemons.append(daemon)
        return daemon

    try:
        yield factory
    finally:
        for daemon in daemons:
            daemon.close()
