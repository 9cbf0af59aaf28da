"""The server end to end, on real Unix sockets."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from supervisor.errors import GuestNotFoundError, PermissionDeniedError
from supervisor.rpc.client import Client
from supervisor.rpc.dispatch import Access, CallContext, Registry
from supervisor.rpc.errors import ConnectionLostError, SocketInUseError
from supervisor.rpc.peercred import PeerCredentials
from supervisor.rpc.server import LOST_METHOD, ServerConnection, group_policy, serve_unix
from supervisor.rpc.trio_client import open_client


class Gate:
    """Lets tests hold a handler until they say so, and see that it is waiting."""

    def __init__(self) -> None:
        self.entered = trio.Semaphore(0)
        self.release = trio.Event()
        self.cancelled = 0
        self.finished = 0


def make_registry(gate: Gate) -> Registry:
    reg = Registry()

    @reg.method("test.echo", access="ro")
    async def echo(ctx: CallContext, *, value: Any = None) -> Any:
        return value

    @reg.method("test.whoami", access="ro")
    async def whoami(ctx: CallContext) -> dict[str, Any]:
        return {
            "uid": ctx.creds.uid,
            "gid": ctx.creds.gid,
            "groups": list(ctx.creds.groups),
            "pid": ctx.creds.pid,
            "access": ctx.access,
        }

    @reg.method("test.set", access="rw")
    async def set_(ctx: CallContext, *, value: int) -> int:
        return value

    @reg.method("test.wait", access="ro")
    async def wait(ctx: CallContext, *, tag: str) -> str:
        gate.entered.release()
        try:
            await gate.release.wait()
        except trio.Cancelled:
            gate.cancelled += 1
            raise
        gate.finished += 1
        return tag

    @reg.method("test.missing", access="ro")
    async def missing(ctx: CallContext, *, name: str) -> None:
        raise GuestNotFoundError(f"no guest named {name!r}", field="name")

    @reg.method("test.crash", access="ro")
    async def crash(ctx: CallContext) -> None:
        raise ZeroDivisionError("boom")

    @reg.method("test.unencodable", access="ro")
    async def unencodable(ctx: CallContext) -> Any:
        return {1, 2}

    @reg.method("test.flood", access="ro")
    async def flood(ctx: CallContext, *, count: int) -> int:
        return sum(ctx.connection.notify_nowait("test.event", {"n": i}) for i in range(count))

    @reg.method("test.note", access="ro")
    async def note(ctx: CallContext, *, n: int) -> bool:
        return ctx.connection.notify_nowait("test.event", {"n": n})

    @reg.method("console.attach", access="rw", upgrade=True)
    async def attach(ctx: CallContext, *, greeting: str) -> str:
        async def shout(stream: trio.abc.Stream) -> None:
            # An uppercase echo until the client half-closes.
            await stream.send_all(greeting.encode() + b"\n")
            async for chunk in stream:  # type: ignore[attr-defined]
                await stream.send_all(bytes(chunk).upper())
            await stream.aclose()

        ctx.after_reply = shout
        return "attached"

    return reg


@pytest.fixture
def gate() -> Gate:
    return Gate()


ServerFactory = Callable[..., Any]


@pytest.fixture
async def start_server(nursery: trio.Nursery, tmp_path: Path, gate: Gate) -> ServerFactory:
    async def start(
        authorize: Callable[[PeerCredentials], Access | None] | None = None,
        path: Path | None = None,
        **options: Any,
    ) -> str:
        sock_path = str(path or tmp_path / "bus.sock")
        policy = authorize or group_policy()
        return await nursery.start(
            partial(serve_unix, sock_path, make_registry(gate), authorize=policy, **options)
        )

    return start


@pytest.fixture
async def server(start_server: ServerFactory) -> str:
    return await start_server()


async def raw_connect(path: str) -> trio.SocketStream:
    return await trio.open_unix_socket(path)


async def read_lines(stream: trio.abc.Stream, count: int) -> list[Any]:
    """Up to *count* JSON lines; fewer if the connection ends first."""
    buf = b""
    while buf.count(b"\n") < count:
        try:
            chunk = await stream.receive_some()
        except trio.BrokenResourceError:
            # Linux resets a Unix socket closed with unread input; what was sent first
            # has been read by then.
            break
        if not chunk:
            break
        buf += chunk
    return [json.loads(line) for line in buf.splitlines()[:count]]


class LineReader:
    """JSON lines from a stream, one at a time."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def next(self) -> Any:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some()
            assert chunk, "connection closed"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


async def flood(stream: trio.abc.Stream) -> None:
    for _ in range(10_000):
        await stream.send_all(b"x" * 4096)


async def read_until_eof(stream: trio.abc.Stream) -> bytes:
    buf = b""
    while chunk := await stream.receive_some():
        buf += chunk
    return buf


def request(method: str, id: int, **params: Any) -> bytes:
    return (
        json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": id}).encode()
        + b"\n"
    )


# --------------------------------------------------------------------------- the socket


async def test_socket_gets_mode_and_group_and_is_removed_on_exit(
    tmp_path: Path, gate: Gate
) -> None:
    path = str(tmp_path / "bus.sock")
    async with trio.open_nursery() as nursery:
        started = await nursery.start(
            partial(serve_unix, path, make_registry(gate), authorize=group_policy(), group=4321)
        )
        assert started == path
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == 4321
        nursery.cancel_scope.cancel()
    assert not os.path.exists(path)


async def test_a_stale_socket_is_replaced(tmp_path: Path, start_server: ServerFactory) -> None:
    path = tmp_path / "bus.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    await start_server(path=path)
    async with open_client(str(path)) as client:
        assert await client.call("test.echo", value=1) == 1


async def test_a_live_socket_or_a_plain_file_is_never_replaced(
    tmp_path: Path, server: str, gate: Gate
) -> None:
    with pytest.raises(SocketInUseError, match="another server is listening"):
        await serve_unix(server, make_registry(gate), authorize=group_policy())
    plain = tmp_path / "file"
    plain.write_text("keep me")
    with pytest.raises(SocketInUseError, match="not a socket"):
        await serve_unix(str(plain), make_registry(gate), authorize=group_policy())
    assert plain.read_text() == "keep me"
    # The first server is unharmed.
    async with open_client(server) as client:
        assert await client.call("test.echo", value="still here") == "still here"


async def test_the_socket_appears_only_once_it_listens(
    tmp_path: Path, start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client polling for the socket while the daemon starts (an rc.d script) must
    # never find it bound but refusing: it would say "daemon not running".
    path = tmp_path / "bus.sock"
    seen: list[str] = []
    real_chmod = os.chmod

    def chmod_and_probe(target: Any, mode: int) -> None:
        real_chmod(target, mode)  # between bind(2) and listen(2)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            seen.append("connected")
        except OSError as exc:
            seen.append(type(exc).__name__)
        finally:
            probe.close()

    monkeypatch.setattr("supervisor.rpc.server.os.chmod", chmod_and_probe)
    await start_server(path=path)
    monkeypatch.undo()
    assert seen == ["FileNotFoundError"]
    assert sorted(os.listdir(tmp_path)) == ["bus.sock"]  # no private name left behind
    async with open_client(str(path)) as client:
        assert await client.call("test.echo", value=1) == 1


async def test_of_two_servers_starting_at_once_only_one_gets_the_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bus.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    real_chmod = os.chmod

    def chmod_and_race(target: Any, mode: int) -> None:
        real_chmod(target, mode)
        other.bind(str(path))  # the other daemon got there first
        other.listen(1)

    monkeypatch.setattr("supervisor.rpc.server.os.chmod", chmod_and_race)
    with other, pytest.raises(SocketInUseError, match="another server is listening"):
        await serve_unix(str(path), make_registry(Gate()), authorize=group_policy())
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["bus.sock"]
    assert stat.S_ISSOCK(os.stat(path).st_mode)


# --------------------------------------------------------------------------- calls


async def test_calls_errors_and_crashes(server: str) -> None:
    async with open_client(server) as client:
        assert await client.call("test.echo", value={"a": [1, None]}) == {"a": [1, None]}
        with pytest.raises(GuestNotFoundError, match="no guest named 'x'") as info:
            await client.call("test.missing", name="x")
        assert info.value.field == "name"
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(Exception, match="internal error") as crash:
                await client.call("test.crash")
            with pytest.raises(Exception, match="internal error"):
                await client.call("test.unencodable")
        assert "boom" not in str(crash.value)
        assert {e["event"] for e in logs} >= {"rpc_method_failed", "rpc_reply_unencodable"}
        # The connection survives all of it.
        assert await client.call("test.echo", value=2) == 2


async def test_two_clients_are_served_concurrently(server: str, gate: Gate) -> None:
    results: dict[str, str] = {}

    async def one(tag: str) -> None:
        async with open_client(server) as client:
            results[tag] = await client.call("test.wait", tag=tag)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "a")
        nursery.start_soon(one, "b")
        # Both handlers are running at once before either may finish.
        await gate.entered.acquire()
        await gate.entered.acquire()
        gate.release.set()
    assert results == {"a": "a", "b": "b"}


async def test_calls_on_one_connection_run_concurrently(server: str, gate: Gate) -> None:
    async with open_client(server) as client, trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.call, "test.wait", tag="slow"))
        await gate.entered.acquire()
        # A second call overtakes the first, which is still waiting.
        assert await client.call("test.echo", value="fast") == "fast"
        gate.release.set()


async def test_a_client_vanishing_mid_call_harms_no_one(server: str, gate: Gate) -> None:
    stream = await raw_connect(server)
    await stream.send_all(request("test.wait", 1, tag="orphan"))
    await gate.entered.acquire()
    with structlog.testing.capture_logs() as logs:
        await stream.aclose()
        async with open_client(server) as other:
            assert await other.call("test.echo", value="ok") == "ok"
        gate.release.set()
        await trio.testing.wait_all_tasks_blocked()
    assert gate.finished + gate.cancelled == 1
    assert not [e for e in logs if e["event"] == "rpc_connection_failed"]
    async with open_client(server) as other:
        assert await other.call("test.echo", value="still") == "still"


async def test_a_half_closed_client_still_gets_its_replies(server: str) -> None:
    async with await raw_connect(server) as stream:
        await stream.send_all(
            request("test.echo", 1, value="a") + request("test.echo", 2, value="b")
        )
        await stream.send_eof()
        lines = (await read_until_eof(stream)).splitlines()
    assert sorted(json.loads(line)["result"] for line in lines) == ["a", "b"]


async def test_an_oversized_message_gets_a_parse_error_and_the_connection_closes(
    start_server: ServerFactory,
) -> None:
    path = await start_server(max_message=1000)
    async with await raw_connect(path) as stream:
        await stream.send_all(request("test.echo", 1, value="ok"))
        # The server stops reading and closes; the client notices while still writing.
        with pytest.raises(trio.BrokenResourceError):
            await flood(stream)
        replies = await read_lines(stream, 3)
    # The call read before the oversized line still gets its reply (in either order).
    by_id = {r["id"]: r for r in replies}
    assert len(replies) == 2
    assert by_id[1]["result"] == "ok"
    assert by_id[None]["error"]["code"] == -32700
    assert "longer than 1000 bytes" in by_id[None]["error"]["message"]


async def test_garbage_lines_are_answered_and_the_connection_goes_on(server: str) -> None:
    stream = await raw_connect(server)
    await stream.send_all(b'{"jsonrpc": "2.0", "method"\n[]\n' + request("test.echo", 7, value=1))
    first, second, third = await read_lines(stream, 3)
    assert (first["id"], first["error"]["code"]) == (None, -32700)
    assert (second["id"], second["error"]["code"]) == (None, -32600)
    assert third == {"jsonrpc": "2.0", "id": 7, "result": 1}
    await stream.aclose()


async def test_batches(server: str) -> None:
    stream = await raw_connect(server)
    batch = [
        {"jsonrpc": "2.0", "method": "test.echo", "params": {"value": 1}, "id": 1},
        {"jsonrpc": "2.0", "method": "test.echo", "params": {"value": 2}},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "test.missing", "params": {"name": "z"}, "id": "m"},
        {"jsonrpc": "2.0", "method": "console.attach", "params": {"greeting": "x"}, "id": 9},
    ]
    notes_only = [{"jsonrpc": "2.0", "method": "test.echo", "params": {"value": 3}}] * 2
    await stream.send_all(
        json.dumps(batch).encode()
        + b"\n"
        + json.dumps(notes_only).encode()
        + b"\n"
        + request("test.echo", 2, value="after")
    )
    replies, after = await read_lines(stream, 2)
    by_id = {r["id"]: r for r in replies}
    assert by_id[1]["result"] == 1
    assert by_id[None]["error"]["code"] == -32600
    assert by_id["m"]["error"]["code"] == GuestNotFoundError.code
    assert by_id[9]["error"]["code"] == -32600
    assert "cannot be called in a batch" in by_id[9]["error"]["message"]
    assert len(replies) == 4
    # The all-notification batch sent nothing: the next line is the plain reply.
    assert after == {"jsonrpc": "2.0", "id": 2, "result": "after"}
    await stream.aclose()


# --------------------------------------------------------------------------- access


async def test_read_only_clients_are_refused_read_write_methods(
    start_server: ServerFactory,
) -> None:
    path = await start_server(authorize=lambda creds: "ro")
    async with open_client(path) as client:
        assert (await client.call("test.whoami"))["access"] == "ro"
        with pytest.raises(PermissionDeniedError, match=r"test\.set: needs read-write access"):
            await client.call("test.set", value=1)


async def test_refused_connections_get_one_error_and_are_closed(
    start_server: ServerFactory,
) -> None:
    seen: list[PeerCredentials] = []

    def nobody(creds: PeerCredentials) -> Access | None:
        seen.append(creds)
        return None

    path = await start_server(authorize=nobody)
    async with await raw_connect(path) as stream:
        [reply] = [json.loads(line) for line in (await read_until_eof(stream)).splitlines()]
    assert reply["id"] is None
    assert reply["error"]["code"] == PermissionDeniedError.code
    assert "uid 0" in reply["error"]["message"]
    assert seen[0].uid == os.getuid()
    assert seen[0].pid == os.getpid()

    def blocking() -> None:
        with Client(path) as client:
            client.call("test.echo", value=1)

    with pytest.raises(PermissionDeniedError, match="may not use this socket"):
        await trio.to_thread.run_sync(blocking)


# --------------------------------------------------------------------------- notifications


async def test_notifications_reach_the_client_in_order(server: str) -> None:
    async with open_client(server) as client:
        for n in range(5):
            assert await client.call("test.note", n=n) is True
        notes = client.notifications()
        got = [(await notes.receive()).params for _ in range(5)]
    assert got == [{"n": n} for n in range(5)]


async def test_a_slow_consumer_loses_events_and_is_told_how_many(
    start_server: ServerFactory,
) -> None:
    path = await start_server(queue_size=8)
    async with await raw_connect(path) as stream:
        # The handler notifies without yielding, faster than any socket drains: the
        # queue of 8 fills and the rest are dropped rather than blocking the handler.
        await stream.send_all(request("test.flood", 1, count=100))
        lines = LineReader(stream)
        got = [await lines.next()]
        while not (has(got, id=1) and has(got, method=LOST_METHOD)):
            got.append(await lines.next())
        # One more event, now that there is room again.
        await stream.send_all(request("test.note", 2, n=1000))
        while not has(got, id=2):
            got.append(await lines.next())
    methods = [line.get("method") for line in got]
    events = [line["params"]["n"] for line in got if line.get("method") == "test.event"]
    lost = [line["params"]["count"] for line in got if line.get("method") == LOST_METHOD]
    [accepted] = [line["result"] for line in got if line.get("id") == 1]
    # The queue's 8 places, plus one handed straight to the idle sender.
    assert accepted in (8, 9)
    assert events == [*range(accepted), 1000]
    # Every event is either delivered or counted, and the count precedes later events.
    assert lost == [100 - accepted]
    assert methods.index(LOST_METHOD) < len(methods) - methods[::-1].index("test.event") - 1


def has(lines: list[Any], **member: Any) -> bool:
    [(key, value)] = member.items()
    return any(key in line and line[key] == value for line in lines)


async def test_notify_on_a_closed_connection_is_a_harmless_false(server: str) -> None:
    holder: list[ServerConnection] = []
    reg = Registry()

    @reg.method("test.keep", access="ro")
    async def keep(ctx: CallContext) -> None:
        assert isinstance(ctx.connection, ServerConnection)
        holder.append(ctx.connection)

    async with trio.open_nursery() as nursery:
        path = await nursery.start(
            partial(serve_unix, server + ".2", reg, authorize=group_policy())
        )
        async with open_client(path) as client:
            await client.call("test.keep")
        await trio.testing.wait_all_tasks_blocked()
        assert holder[0].closed
        assert holder[0].notify_nowait("test.event", {}) is False
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- upgrade


async def test_upgrade_hands_over_the_raw_stream_with_bytes_sent_early(server: str) -> None:
    async with await raw_connect(server) as stream:
        await upgrade_with_early_bytes(stream)


async def upgrade_with_early_bytes(stream: trio.SocketStream) -> None:
    # The raw bytes follow the request in the same write: the server must not parse them.
    await stream.send_all(
        request("test.echo", 1, value="before")
        + request("console.attach", 2, greeting="hello")
        + b"raw {not json}\n"
    )
    buf = b""
    while buf.count(b"\n") < 4:
        buf += await stream.receive_some()
    first, second, rest = buf.split(b"\n", 2)
    assert json.loads(first)["result"] == "before"
    assert json.loads(second) == {"jsonrpc": "2.0", "id": 2, "result": "attached"}
    await stream.send_all(b"more\x00bytes")
    await stream.send_eof()
    rest += await read_until_eof(stream)
    assert rest == b"hello\nRAW {NOT JSON}\nMORE\x00BYTES"


async def test_trio_client_upgrade(server: str) -> None:
    async with open_client(server) as client:
        result, raw = await client.upgrade("console.attach", greeting="hi")
        assert result == "attached"
        await raw.send_all(b"abc")
        got = b""
        while len(got) < len(b"hi\nABC"):
            got += await raw.receive_some()
        assert got == b"hi\nABC"
        with pytest.raises(ConnectionLostError):
            await client.call("test.echo", value=1)
        await raw.aclose()


# --------------------------------------------------------------------------- blocking client


async def test_blocking_client_against_the_trio_server(server: str) -> None:
    def session() -> tuple[Any, ...]:
        with Client(server, timeout=10) as client:
            echoed = client.call("test.echo", value=[1, "é"])
            who = client.call("test.whoami")
            try:
                client.call("test.missing", name="q")
            except GuestNotFoundError as exc:
                missing = (exc.field, str(exc))
            client.call("test.note", n=5)
            client.notify("test.note", n=6)
            client.call("test.echo", value=0)
            notes = [n.params for n in client.notifications(timeout=0.5)]
            return echoed, who, missing, notes

    echoed, who, missing, notes = await trio.to_thread.run_sync(session)
    assert echoed == [1, "é"]
    assert (who["uid"], who["pid"], who["access"]) == (os.getuid(), os.getpid(), "rw")
    assert missing == ("name", "no guest named 'q'")
    assert notes == [{"n": 5}, {"n": 6}]


async def test_blocking_client_upgrade_keeps_early_bytes(server: str) -> None:
    def session() -> bytes:
        with Client(server, timeout=10) as client:
            assert client.call("console.attach", greeting="hey") == "attached"
            sock, early = client.raw_socket()
            with sock:
                sock.sendall(b"xyz")
                sock.shutdown(socket.SHUT_WR)
                data = early
                while chunk := sock.recv(100):
                    data += chunk
            return data

    assert await trio.to_thread.run_sync(session) == b"hey\nXYZ"


async def test_a_client_that_never_reads_starves_no_one(start_server: ServerFactory) -> None:
    path = await start_server(queue_size=4, max_concurrent=2)
    big = "x" * 65536
    async with await raw_connect(path) as hog, trio.open_nursery() as nursery:
        sent = 0

        async def flood_requests() -> None:
            nonlocal sent
            for n in range(1000):
                await hog.send_all(request("test.echo", n, value=big))
                sent += 1

        nursery.start_soon(flood_requests)
        # The hog's replies fill its socket and queue, its calls wait, the server stops
        # reading from it, and its own writes stall: all of it stays on its connection.
        await trio.testing.wait_all_tasks_blocked()
        assert sent < 1000  # the daemon pushed back instead of buffering it all
        async with open_client(path) as other:
            assert await other.call("test.echo", value="served") == "served"
        nursery.cancel_scope.cancel()
