"""A trio JSON-RPC client for the daemon's socket.

Unlike the blocking CLI client, calls may run concurrently: one reader task matches
replies to callers by id and passes the daemon's notifications to a bounded channel.
Use it as an async context manager::

    async with open_client(path) as client:
        info = await client.call("domain.get_info", name="web1")
        async for note in client.notifications():
            ...

Errors are the same as the blocking client's (typed :mod:`supervisor.errors` classes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio

from supervisor._record import Record
from supervisor._triosock import open_unix
from supervisor.errors import InvalidValueError, PermissionDeniedError
from supervisor.host import SOCKET_PATH
from supervisor.rpc._streams import PrefixedStream
from supervisor.rpc.client import MAX_REPLY
from supervisor.rpc.errors import ConnectionLostError, DaemonNotRunningError, error_from_object
from supervisor.rpc.protocol import (
    NEED_DATA,
    Batch,
    Connection,
    ConnectionClosed,
    ErrorResponse,
    Id,
    Invalid,
    Message,
    Notification,
    RemoteProtocolError,
    Request,
    Response,
)

__all__ = ["TrioClient", "open_client"]

#: Notifications kept for a consumer that is slower than the daemon.
DEFAULT_NOTIFICATION_BUFFER: Final = 1024
RECEIVE_SIZE: Final = 64 * 1024


@attrs.define(repr=False)
class _Waiter(Record):
    done: trio.Event = attrs.field(factory=trio.Event)
    upgrade: bool = False
    reply: Response | ErrorResponse | None = None
    error: BaseException | None = None
    stream: trio.abc.Stream | None = None


async def _connect(path: str) -> trio.SocketStream:
    try:
        return trio.SocketStream(await open_unix(path))
    except FileNotFoundError:
        raise DaemonNotRunningError(f"daemon not running (no socket at {path})") from None
    except ConnectionRefusedError:
        raise DaemonNotRunningError(f"daemon not running (stale socket at {path})") from None
    except PermissionError:
        raise PermissionDeniedError(f"permission denied on {path}") from None
    except OSError as exc:
        if "too long" in str(exc):
            raise InvalidValueError(
                f"socket path too long for AF_UNIX: {path}", field="path"
            ) from None
        raise


class TrioClient:
    """A connection to the daemon; create it with :func:`open_client`."""

    def __init__(
        self, stream: trio.abc.Stream, *, max_message: int, notification_buffer: int
    ) -> None:
        self._stream = stream
        self._proto = Connection("client", max_message=max_message)
        self._waiters: dict[Id, _Waiter] = {}
        self._send_lock = trio.Lock()
        self._notes_send, self._notes_recv = trio.open_memory_channel[Notification](
            notification_buffer
        )
        self._failure: BaseException | None = None
        self.switched = False
        #: Notifications dropped because nobody took them fast enough.
        self.lost_notifications = 0

    # -- calls

    async def call(self, method: str, /, **params: Any) -> Any:
        """Call *method* with named *params* and return its result.

        Raises:
            SupervisorError: the error reply, as its typed subclass.
            ConnectionLostError: the connection closed before the reply.
        """
        result, _ = await self._roundtrip(method, params, upgrade=False)
        return result

    async def upgrade(self, method: str, /, **params: Any) -> tuple[Any, trio.abc.Stream]:
        """Call a method that takes over the connection (console attach).

        Returns:
            The result and the raw byte stream; the client is finished with JSON.
        """
        result, stream = await self._roundtrip(method, params, upgrade=True)
        assert stream is not None
        return result, stream

    async def notify(self, method: str, /, **params: Any) -> None:
        """Send a notification (no reply)."""
        await self._send(self._proto.send(Notification(method, params or None)), method)

    def notifications(self) -> trio.MemoryReceiveChannel[Notification]:
        """The daemon's notifications; the channel ends when the connection does."""
        return self._notes_recv

    async def _send(self, data: bytes, method: str) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            async with self._send_lock:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionLostError(f"the daemon closed the connection ({method})") from None

    async def _roundtrip(
        self, method: str, params: dict[str, Any], *, upgrade: bool
    ) -> tuple[Any, trio.abc.Stream | None]:
        if self._failure is not None:
            raise self._failure
        id = self._proto.next_id()
        data = self._proto.send(Request(id=id, method=method, params=params or None))
        waiter = self._waiters[id] = _Waiter(upgrade=upgrade)
        try:
            await self._send(data, method)
            await waiter.done.wait()
        finally:
            del self._waiters[id]
        if waiter.error is not None:
            raise waiter.error
        if isinstance(waiter.reply, ErrorResponse):
            raise error_from_object(waiter.reply.error)
        assert waiter.reply is not None
        return waiter.reply.result, waiter.stream

    # -- the reader

    def _fail_all(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        for waiter in self._waiters.values():
            if not waiter.done.is_set():
                waiter.error = exc
                waiter.done.set()

    async def _read(self) -> None:
        try:
            while not self.switched:
                try:
                    event = self._proto.next_event()
                except RemoteProtocolError as exc:
                    self._fail_all(exc)
                    return
                if event is NEED_DATA:
                    try:
                        data = await self._stream.receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    self._proto.receive_data(data)
                elif isinstance(event, ConnectionClosed):
                    self._fail_all(ConnectionLostError("the daemon closed the connection"))
                    return
                elif isinstance(event, Batch):
                    for item in event.messages:
                        self._deliver(item)
                else:
                    self._deliver(event)
        finally:
            self._notes_send.close()

    def _deliver(self, event: Message | Invalid) -> None:
        if isinstance(event, Notification):
            try:
                self._notes_send.send_nowait(event)
            except trio.WouldBlock:
                self.lost_notifications += 1
        elif isinstance(event, Invalid):
            exc = RemoteProtocolError(f"bad reply from the daemon: {event.error.message}")
            waiter = self._waiters.get(event.id) if event.id is not None else None
            if waiter is not None:
                waiter.error = exc
                waiter.done.set()
            else:
                self._fail_all(exc)
        elif isinstance(event, ErrorResponse) and event.id is None:
            # The daemon refused the connection or could not read a request.
            self._fail_all(error_from_object(event.error))
        elif isinstance(event, Response | ErrorResponse):
            waiter = self._waiters.get(event.id)
            if waiter is None:
                return  # its caller was cancelled
            waiter.reply = event
            if waiter.upgrade and isinstance(event, Response):
                self.switched = True
                waiter.stream = PrefixedStream(self._stream, self._proto.switch_protocol())
                waiter.done.set()
                self._fail_all(ConnectionLostError("the connection was upgraded"))
                return
            waiter.done.set()


@asynccontextmanager
async def open_client(
    path: str = SOCKET_PATH,
    *,
    max_message: int = MAX_REPLY,
    notification_buffer: int = DEFAULT_NOTIFICATION_BUFFER,
) -> AsyncIterator[TrioClient]:
    """Connect to the daemon at *path*; the connection closes when the block ends.

    After :meth:`TrioClient.upgrade` the raw stream belongs to the caller and is not
    closed here.

    Raises:
        DaemonNotRunningError: no socket at *path*, or nobody listening on it.
        PermissionDeniedError: the socket exists but this user may not open it.
    """
    stream = await _connect(path)
    client = TrioClient(stream, max_message=max_message, notification_buffer=notification_buffer)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if not client.switched:
            await trio.aclose_forcefully(stream)
