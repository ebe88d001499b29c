"""Issue 5 part 5 transport: the JSON-lines control socket, server and client, for real."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from vmgated.control import (
    ROWS_CHUNK,
    ControlError,
    ControlServer,
    DaemonNotRunning,
    Progress,
    Rows,
    call,
)

T = TypeVar("T")


async def status(args: dict[str, Any], progress: Progress) -> object:
    return {"state": "running", "echo": args}


async def pay(args: dict[str, Any], progress: Progress) -> object:
    if args.get("amount") == "-1":
        raise ControlError("pay: amount must be positive, got -1")
    return {"reference": args["ref"]}


async def replay(args: dict[str, Any], progress: Progress) -> object:
    total = int(args["total"])
    for done in range(1, total + 1):
        progress(done, total)
        await asyncio.sleep(0.03)
    return {"packets": total}


async def crash(args: dict[str, Any], progress: Progress) -> object:
    raise KeyError("bug")


async def not_json(args: dict[str, Any], progress: Progress) -> object:
    return {1, 2}


TICKS: list[int] = []  # appended by a loop task while `rows` streams


async def rows(args: dict[str, Any], progress: Progress) -> object:
    def produce() -> Iterator[dict[str, int]]:
        for n in range(int(args["n"])):
            if n == args.get("fail_at"):
                raise ValueError("a row could not be produced")
            yield {"n": n, "ticks": len(TICKS)}

    return Rows(produce())


HANDLERS = {"status": status, "pay": pay, "replay": replay, "crash": crash,
            "not_json": not_json, "rows": rows}


def with_server(path: Path, client: Callable[[], T]) -> T:
    """Run the server on uvloop and the blocking client in a thread, like vmgatectl does."""

    async def main() -> T:
        server = ControlServer(path, HANDLERS)
        await server.start()

        async def tick() -> None:
            while True:
                TICKS.append(1)
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        try:
            return await asyncio.to_thread(client)
        finally:
            ticker.cancel()
            await server.stop()

    return uvloop.run(main())


def test_request_and_result(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    result = with_server(sock, lambda: call(sock, "status", {"verbose": True}))
    assert result == {"state": "running", "echo": {"verbose": True}}


def test_a_long_listing_is_streamed_in_chunks_with_the_loop_running_between_them(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "control.sock"
    n = 5 * ROWS_CHUNK + 7
    result = with_server(sock, lambda: call(sock, "rows", {"n": n}))
    assert [r["n"] for r in result] == list(range(n))  # complete, in order, one JSON line
    # Rows of one chunk are made in one go; between chunks the loop ran other tasks.
    ticks = [r["ticks"] for r in result]
    assert len(set(ticks)) >= 5
    assert all(ticks[i] == ticks[i - 1] for i in range(1, n) if i % ROWS_CHUNK)
    assert with_server(sock, lambda: call(sock, "rows", {"n": 0})) == []


def test_a_listing_that_fails_midway_is_an_error_not_a_short_list(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"

    def client() -> str:
        with pytest.raises(ControlError) as info:
            call(sock, "rows", {"n": 3 * ROWS_CHUNK, "fail_at": 2 * ROWS_CHUNK + 5})
        assert call(sock, "status") == {"state": "running", "echo": {}}  # server lives on
        return str(info.value)

    assert with_server(sock, client) == "vmgated broke off its answer to 'rows' (see its log)"


def test_socket_is_mode_0660_and_removed_at_stop(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"

    def check() -> int:
        return stat.S_IMODE(os.stat(sock).st_mode)

    assert with_server(sock, check) == 0o660
    assert not sock.exists()


def test_handler_errors_are_responses_and_the_server_lives_on(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"

    def client() -> list[str]:
        errors = []
        for cmd, args in (("pay", {"amount": "-1", "ref": "x"}), ("crash", {}),
                          ("not_json", {}), ("nope", {})):
            with pytest.raises(ControlError) as info:
                call(sock, cmd, args)
            errors.append(str(info.value))
        assert call(sock, "pay", {"amount": "5", "ref": "r1"}) == {"reference": "r1"}
        return errors

    errors = with_server(sock, client)
    assert errors[0] == "pay: amount must be positive, got -1"
    assert errors[1].startswith("crash failed inside the daemon: KeyError")
    assert errors[2].startswith("not_json failed inside the daemon: TypeError")
    assert errors[3].startswith("unknown command 'nope'; known: crash, not_json, pay")


def test_progress_is_streamed_before_the_result(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    seen: list[tuple[int, int]] = []
    result = with_server(sock, lambda: call(sock, "replay", {"total": 10},
                                            on_progress=lambda d, t: seen.append((d, t)),
                                            timeout=5))
    assert result == {"packets": 10}
    assert seen[-1] == (10, 10)  # the final count always arrives
    assert 2 <= len(seen) <= 10  # throttled, but visible while it runs
    assert seen == sorted(seen)


def test_many_requests_on_one_connection_and_bad_lines(tmp_path: Path) -> None:
    sock_path = tmp_path / "control.sock"

    def client() -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock_path))
            s.sendall(b'{"cmd": "status"}\nnot json\n[1]\n{"cmd": "pay", "args": {"ref": "a"}}\n')
            reader = s.makefile("rb")
            return [json.loads(reader.readline()) for _ in range(4)]

    answers = with_server(sock_path, client)
    assert answers[0] == {"ok": True, "result": {"state": "running", "echo": {}}}
    assert answers[1]["ok"] is False and "not JSON" in answers[1]["error"]
    assert answers[2]["ok"] is False and '"cmd"' in answers[2]["error"]
    assert answers[3] == {"ok": True, "result": {"reference": "a"}}


def test_daemon_not_running_is_a_clear_message(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    with pytest.raises(DaemonNotRunning, match=r"vmgated is not running \(no control socket at "):
        call(sock, "status")
    # A socket file left by a daemon that was killed: nothing accepts on it.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()
    with pytest.raises(DaemonNotRunning):
        call(sock, "status")


def test_stale_socket_is_replaced_but_a_live_daemon_is_not(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()
    assert with_server(sock, lambda: call(sock, "status"))["state"] == "running"

    async def two_daemons() -> str:
        first = ControlServer(sock, HANDLERS)
        await first.start()
        try:
            with pytest.raises(ControlError, match="another vmgated is already running"):
                await ControlServer(sock, HANDLERS).start()
            return await asyncio.to_thread(call, sock, "status")  # type: ignore[no-any-return]
        finally:
            await first.stop()

    assert uvloop.run(two_daemons())["state"] == "running"  # type: ignore[index]


def test_a_plain_file_in_the_way_is_refused(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    sock.write_text("not a socket")

    async def start() -> None:
        await ControlServer(sock, HANDLERS).start()

    with pytest.raises(ControlError, match="is not a socket"):
        uvloop.run(start())
    assert sock.read_text() == "not a socket"


def test_vmgatectl_says_so_in_one_line_when_the_daemon_is_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A daemon that accepts the connection and never answers (stuck, or overloaded past
    # the client's wait): an error line and exit 1, not a TimeoutError traceback.
    import shutil

    from vmgated.cli import live
    from vmgated.cli.main import main

    root = Path(__file__).resolve().parents[2]
    shutil.copytree(root / "conf" / "decks", tmp_path / "decks")
    sock_path = tmp_path / "silent.sock"
    text = (root / "conf" / "vmgated.yaml").read_text()
    config = tmp_path / "vmgated.yaml"
    config.write_text(text.replace("./var/control.sock", str(sock_path)))
    assert str(sock_path) in config.read_text()
    real_call = live.call
    monkeypatch.setattr(live, "call", lambda *a, **k: real_call(*a, **{**k, "timeout": 0.3}))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(sock_path))
        server.listen()
        code = main(["--config", str(config), "status"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "did not answer 'status'" in err and "Traceback" not in err
