"""The clients' own behaviour: connecting, losing the daemon, timeouts."""

from __future__ import annotations

import socket
from functools import partial
from pathlib import Path

import pytest
import trio

from supervisor.errors import InvalidValueError
from supervisor.rpc.client import Client
from supervisor.rpc.errors import (
    ConnectionLostError,
    DaemonNotRunningError,
    RequestTimeoutError,
)
from supervisor.rpc.protocol import RemoteProtocolError
from supervisor.rpc.server import group_policy, serve_unix
from supervisor.rpc.trio_client import open_client
from tests.rpc.test_server import Gate, make_registry
from tests.test_sockutil import fill_queue


def stale_socket(path: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()


def test_blocking_client_says_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    path = tmp_path / "bus.sock"
    with pytest.raises(
        DaemonNotRunningError, match=f"daemon not running \\(no socket at {path}\\)"
    ):
        Client(str(path))
    stale_socket(path)
    with pytest.raises(DaemonNotRunningError, match="stale socket at"):
        Client(str(path))


def test_blocking_client_refuses_a_path_too_long_for_a_socket(tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="socket path too long"):
        Client(str(tmp_path / ("x" * 200)))


def test_blocking_client_says_when_the_daemon_cannot_take_the_connection(
    tmp_path: Path,
) -> None:
    # A daemon so busy that its accept queue is full: the client waits for room, then
    # gives up with an error that says so, not a socket that only looks connected.
    path = tmp_path / "bus.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    held = fill_queue(str(path))
    try:
        with pytest.raises(RequestTimeoutError, match="accept queue stayed full"):
            Client(str(path), timeout=0.3)
    finally:
        for s in held:
            s.close()
        listener.close()


async def test_trio_client_says_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    path = tmp_path / "bus.sock"
    with pytest.raises(DaemonNotRunningError, match="no socket at"):
        async with open_client(str(path)):
            pass
    stale_socket(path)
    with pytest.raises(DaemonNotRunningError, match="stale socket at"):
        async with open_client(str(path)):
            pass


async def start(nursery: trio.Nursery, tmp_path: Path, gate: Gate) -> tuple[str, trio.CancelScope]:
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[str]) -> None:
        with scope:
            await serve_unix(
                str(tmp_path / "bus.sock"),
                make_registry(gate),
                authorize=group_policy(),
                task_status=task_status,
            )

    path: str = await nursery.start(run)
    return path, scope


async def test_a_call_in_flight_when_the_daemon_stops_fails_cleanly(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    gate = Gate()
    path, server = await start(nursery, tmp_path, gate)

    async def blocking_call() -> BaseException | None:
        def call() -> None:
            with Client(path, timeout=10) as client:
                client.call("test.wait", tag="blocking")

        try:
            await trio.to_thread.run_sync(call)
        except Exception as exc:
            return exc
        return None

    async with open_client(path) as client:
        errors: list[BaseException | None] = []

        async def trio_call() -> None:
            try:
                await client.call("test.wait", tag="trio")
            except ConnectionLostError as exc:
                errors.append(exc)

        async def blocking() -> None:
            errors.append(await blocking_call())

        async with trio.open_nursery() as calls:
            calls.start_soon(trio_call)
            calls.start_soon(blocking)
            await gate.entered.acquire()
            await gate.entered.acquire()
            server.cancel()
        assert len(errors) == 2
        assert all(isinstance(e, ConnectionLostError) for e in errors), errors
        # Later calls fail at once with the same condition.
        with pytest.raises(ConnectionLostError):
            await client.call("test.echo", value=1)


async def test_blocking_client_times_out(nursery: trio.Nursery, tmp_path: Path) -> None:
    gate = Gate()
    path, _ = await start(nursery, tmp_path, gate)

    def call() -> None:
        with Client(path, timeout=0.2) as client:
            client.call("test.wait", tag="forever")

    with pytest.raises(RequestTimeoutError, match=r"no reply to test\.wait within 0\.2 s"):
        await trio.to_thread.run_sync(call)
    gate.release.set()


async def test_a_reply_that_breaks_the_protocol_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "fake.sock")
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(1)

    async def fake_daemon() -> None:
        conn, _ = await listener.accept()
        with conn:
            await conn.recv(1000)
            await conn.send(b'{"jsonrpc":"2.0","id":1,"result":1,"error":{}}\n')
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_daemon)

        def call() -> None:
            with Client(path, timeout=10) as client:
                client.call("test.echo")

        with pytest.raises(RemoteProtocolError, match="exactly one of result and error"):
            await trio.to_thread.run_sync(call)
        nursery.cancel_scope.cancel()
    listener.close()


async def test_trio_client_concurrent_calls_and_notifications(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    gate = Gate()
    path, _ = await start(nursery, tmp_path, gate)
    async with open_client(path) as client:
        results: dict[int, int] = {}

        async def echo(n: int) -> None:
            results[n] = await client.call("test.echo", value=n)

        async with trio.open_nursery() as calls:
            for n in range(20):
                calls.start_soon(partial(echo, n))
        assert results == {n: n for n in range(20)}
        await client.notify("test.note", n=3)
        note = await client.notifications().receive()
        assert (note.method, note.params) == ("test.event", {"n": 3})


def test_a_bulk_read_falls_back_to_a_stream_with_a_daemon_that_predates_to_fd(
    tmp_path: Path,
) -> None:
    from supervisor.rpc.errors import InvalidParamsError

    client = object.__new__(Client)
    calls: list[str] = []

    def call_to_fd(method: str, fd: int, /, **params: object) -> dict[str, object]:
        calls.append("to_fd")
        raise InvalidParamsError("unknown parameter 'to_fd'", field="to_fd")

    def call_stream(method: str, sink: object, /, **params: object) -> dict[str, object]:
        calls.append("stream")
        return {"size": 3, "stream": True}

    client.call_to_fd = call_to_fd  # type: ignore[method-assign]
    client.call_stream = call_stream  # type: ignore[method-assign]
    with open(tmp_path / "out", "wb") as sink:
        assert client.read_into("domain.block_peek", sink, size=3)["stream"] is True
    assert calls == ["to_fd", "stream"]

    def refused(method: str, fd: int, /, **params: object) -> dict[str, object]:
        raise InvalidParamsError("size: must be >= 0", field="size")

    client.call_to_fd = refused  # type: ignore[method-assign]
    with open(tmp_path / "out", "wb") as sink, pytest.raises(InvalidParamsError, match="size"):
        client.read_into("domain.block_peek", sink, size=-1)
