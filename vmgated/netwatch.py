"""A network interface's addresses through netlink (pyroute2), resolved once or followed.

uvloop cannot open AF_NETLINK sockets, and pyroute2's synchronous API runs its own event loop
(so it cannot be called from a thread whose loop is running). The watch therefore runs
pyroute2's asyncio API on a private stdlib selector loop in its own thread and hands each new
address set to the caller's loop with `call_soon_threadsafe`.

Addresses returned are the ones a listener can bind: IPv6 link-local addresses (they need a
scope and change with the link) and addresses still in duplicate address detection
(tentative, or failed) are left out; the kernel announces a tentative address again once it
becomes usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["InterfaceWatch", "resolve"]

log = logging.getLogger(__name__)

_IFA_F_DADFAILED = 0x08
_IFA_F_TENTATIVE = 0x40
RETRY_AFTER = 5.0  # seconds before re-opening a netlink subscription that failed


def _usable(msg: Any) -> str | None:
    address = msg.get_attr("IFA_ADDRESS")
    if address is None:
        return None
    flags = msg.get_attr("IFA_FLAGS")
    if flags is None:
        flags = msg["flags"]
    if flags & (_IFA_F_TENTATIVE | _IFA_F_DADFAILED):
        return None
    if str(address).lower().startswith("fe80:"):
        return None
    return str(address)


async def _resolve(ifname: str) -> frozenset[str]:
    from pyroute2 import AsyncIPRoute  # type: ignore[import-untyped]

    async with AsyncIPRoute() as ipr:
        indexes = await ipr.link_lookup(ifname=ifname)
        if not indexes:
            return frozenset()
        addresses = set()
        async for msg in await ipr.get_addr(index=indexes[0]):
            usable = _usable(msg)
            if usable is not None:
                addresses.add(usable)
        return frozenset(addresses)


def resolve(ifname: str) -> frozenset[str]:
    """The bindable addresses of interface `ifname` now (empty when it does not exist).

    Blocking, with its own event loop: call it from a thread whose loop is not running
    (e.g. `await asyncio.to_thread(resolve, name)` from the daemon).
    """
    loop = asyncio.SelectorEventLoop()  # never uvloop: it cannot open netlink sockets
    try:
        return loop.run_until_complete(_resolve(ifname))
    finally:
        loop.close()


class InterfaceWatch:
    """Follows `ifname`'s addresses; calls `on_change(addresses)` on the caller's loop.

    The first call comes right after the subscription is in place (the current set), then one
    per change of the set. Create and `start()` it from the event loop that should receive
    the callbacks; `stop()` from the same loop.
    """

    def __init__(self, ifname: str, on_change: Callable[[frozenset[str]], None]) -> None:
        self.ifname = ifname
        self.on_change = on_change
        self._target: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    def start(self) -> None:
        """Start the netlink thread."""
        self._target = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"netwatch-{self.ifname}",
                                        daemon=True)
        self._thread.start()
        self._started.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close its netlink socket."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # its loop already finished
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        loop = asyncio.SelectorEventLoop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._follow())
            self._started.set()
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._started.set()
            loop.close()

    async def _follow(self) -> None:
        from pyroute2 import AsyncIPRoute
        from pyroute2.netlink.rtnl import (  # type: ignore[import-untyped]
            RTMGRP_IPV4_IFADDR,
            RTMGRP_IPV6_IFADDR,
            RTMGRP_LINK,
        )

        groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        last: frozenset[str] | None = None
        while True:
            try:
                async with AsyncIPRoute() as events:
                    # Subscribe before the dump so no change between the two is missed.
                    await events.bind(groups=groups)
                    while True:
                        current = await _resolve(self.ifname)
                        if current != last:
                            last = current
                            self._deliver(current)
                        # One recv's worth of messages; any link/address event re-resolves.
                        async for _msg in events.get():
                            pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("netlink watch of %s failed (%s); retrying in %gs", self.ifname, exc,
                          RETRY_AFTER)
                await asyncio.sleep(RETRY_AFTER)

    def _deliver(self, addresses: frozenset[str]) -> None:
        assert self._target is not None
        with contextlib.suppress(RuntimeError):  # the daemon's loop closed: shutting down
            self._target.call_soon_threadsafe(self.on_change, addresses)
