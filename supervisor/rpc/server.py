"""The JSON-RPC server on a Unix socket: the trio glue around the sans-IO core.

Shape of one connection::

    reader ──(request)──► handler tasks ──(reply lines)──►┐
       │                                                  ├─► bounded channel ─► sender ─► socket
       └── notify_nowait(event) ─────(dropped when full)──┘

- The reader parses lines and starts one task per request, at most ``max_concurrent`` at
  a time; when that many are running it stops reading, so a client that floods requests
  is slowed down by its own socket buffer, not by the daemon's memory.
- Every outgoing line goes through one channel to one sender task, so lines never
  interleave. Replies wait for room in the channel; notifications never wait: when the
  channel is full they are counted as lost and, once there is room again, the client
  gets one ``events.lost`` notification with the count before the next event.
- A method registered with ``upgrade=True`` runs alone, with the reader paused: it first
  waits for the calls sent before it to reply. If it sets ``ctx.after_reply``, the
  sender writes its reply, stops the connection's other tasks (notifications queued
  after the reply are dropped) and hands the raw stream, with any bytes the reader had
  already taken, to that function; the connection speaks no JSON afterwards.
- A client that half-closes still gets the replies to what it sent; one that is gone is
  noticed when a write fails, which cancels its calls.
- Nothing a connection does reaches another connection or the listener: each
  connection's failures are caught and logged where it is served (``serve_listeners``
  would otherwise take the whole server down).

Trio has no Unix listener, so :func:`serve_unix` builds one: socket, bind under a tight
umask, chown/chmod, listen, :class:`trio.SocketListener`.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Final, TypeAlias

import attrs
import structlog
import trio

from supervisor._record import Record
from supervisor.errors import PermissionDeniedError
from supervisor.rpc._streams import PrefixedStream
from supervisor.rpc.dispatch import Access, AfterReply, CallContext, Registry
from supervisor.rpc.errors import SocketInUseError
from supervisor.rpc.peercred import PeerCredentials, peer_credentials
from supervisor.rpc.protocol import (
    MAX_MESSAGE,
    NEED_DATA,
    Batch,
    Connection,
    ConnectionClosed,
    ErrorCode,
    ErrorObject,
    ErrorResponse,
    Invalid,
    LocalProtocolError,
    Notification,
    Params,
    RemoteProtocolError,
    Request,
    Response,
    encode,
)

__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_QUEUE_SIZE",
    "LOST_METHOD",
    "Authorize",
    "ServerConnection",
    "group_policy",
    "serve_unix",
]

LOGGER = structlog.get_logger("supervisor.rpc.server")

#: Decides what a peer may do: ``"rw"``, ``"ro"``, or None to refuse the connection.
Authorize: TypeAlias = Callable[[PeerCredentials], Access | None]

#: Requests of one connection that may run at the same time.
DEFAULT_MAX_CONCURRENT: Final = 16
#: Outgoing lines one connection may have waiting to be written.
DEFAULT_QUEUE_SIZE: Final = 256
#: The notification that tells a slow client how many notifications it missed.
LOST_METHOD: Final = "events.lost"

RECEIVE_SIZE: Final = 64 * 1024
BACKLOG: Final = 128
#: How long a stale-socket probe may take before the socket is deemed alive.
PROBE_TIMEOUT: Final = 5.0
#: How long, and for how many bytes, a refused client is heard out before the close.
REFUSAL_LINGER: Final = 2.0
REFUSAL_DRAIN: Final = 64 * 1024


def group_policy(
    *,
    rw_groups: Iterable[int] = (),
    ro_groups: Iterable[int] = (),
    rw_users: Iterable[int] = (0,),
) -> Authorize:
    """The usual access rule: some users and groups read-write, some groups read-only.

    Args:
        rw_groups: groups whose members get read-write access.
        ro_groups: groups whose members get read-only access.
        rw_users: users who get read-write access (root by default).
    """
    rw_g, ro_g, rw_u = frozenset(rw_groups), frozenset(ro_groups), frozenset(rw_users)

    def authorize(creds: PeerCredentials) -> Access | None:
        if creds.uid in rw_u or any(creds.in_group(g) for g in rw_g):
            return "rw"
        if any(creds.in_group(g) for g in ro_g):
            return "ro"
        return None

    return authorize


@attrs.frozen(repr=False)
class _Outgoing(Record):
    data: bytes
    after: AfterReply | None = None


class ServerConnection:
    """One client connection (what :attr:`CallContext.connection` is).

    Created by :func:`serve_unix`; handlers use :meth:`notify_nowait` and :attr:`closed`.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        registry: Registry,
        creds: PeerCredentials,
        access: Access,
        *,
        max_message: int = MAX_MESSAGE,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self.creds = creds
        self.access: Access = access
        self._stream = stream
        self._registry = registry
        self._proto = Connection("server", max_message=max_message)
        self._max_concurrent = max_concurrent
        self._slots = trio.Semaphore(max_concurrent)
        self._send, self._recv = trio.open_memory_channel[_Outgoing](queue_size)
        self._scope = trio.CancelScope()
        self._closed = False
        self._lost = 0
        self._after: AfterReply | None = None
        self._trailing = b""

    @property
    def closed(self) -> bool:
        """Whether the connection is finished (notifications are dropped)."""
        return self._closed

    @property
    def lost(self) -> int:
        """Notifications dropped since the last ``events.lost`` was queued."""
        return self._lost

    # -- notifications

    def notify_nowait(self, method: str, params: Params = None) -> bool:
        """Queue a notification; never blocks.

        Returns:
            True if queued; False if the connection is closed or its queue is full (the
            loss is counted and reported to the client with ``events.lost``).

        Raises:
            LocalProtocolError: *params* cannot be encoded as JSON.
        """
        if self._closed:
            return False
        data = self._proto.send(Notification(method, params))
        if self._lost and not self._put_nowait(self._lost_line()):
            self._lost += 1
            return False
        self._lost = 0
        if not self._put_nowait(data):
            self._lost += 1
            return False
        return True

    def _put_nowait(self, data: bytes) -> bool:
        try:
            self._send.send_nowait(_Outgoing(data))
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._closed = True
            return False
        return True

    def _lost_line(self) -> bytes:
        return self._proto.send(Notification(LOST_METHOD, {"count": self._lost}))

    # -- the connection's life

    async def run(self) -> None:
        """Serve the connection until the peer leaves or it is upgraded."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sender)
                    try:
                        async with trio.open_nursery() as calls:
                            await self._read(calls)
                    finally:
                        self._send.close()
        finally:
            self._closed = True
        if self._after is not None:
            await self._after(PrefixedStream(self._stream, self._trailing))

    async def _sender(self) -> None:
        try:
            async for item in self._recv:
                await self._stream.send_all(item.data)
                if item.after is not None:
                    self._trailing = self._proto.switch_protocol()
                    self._after = item.after
                    self._closed = True
                    self._scope.cancel()
                    return
                if self._lost and not self._recv.statistics().current_buffer_used:
                    data, self._lost = self._lost_line(), 0
                    await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            LOGGER.debug("rpc_peer_gone", uid=self.creds.uid, pid=self.creds.pid)
            self._closed = True
            self._scope.cancel()

    async def _read(self, calls: trio.Nursery) -> None:
        while True:
            try:
                event = self._proto.next_event()
            except RemoteProtocolError as exc:
                LOGGER.info("rpc_protocol_error", error=str(exc), uid=self.creds.uid)
                await self._send.send(_Outgoing(self._proto.send(exc.reply)))
                return
            if event is NEED_DATA:
                try:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                self._proto.receive_data(data)
            elif isinstance(event, ConnectionClosed):
                return
            elif isinstance(event, Invalid):
                await self._reply(event.reply)
            elif isinstance(event, Request | Notification):
                method = self._registry.get(event.method)
                if isinstance(event, Request) and method is not None and method.upgrade:
                    if await self._upgrade_call(event):
                        return
                else:
                    await self._slots.acquire()
                    calls.start_soon(self._released, partial(self._call, event))
            elif isinstance(event, Batch):
                await self._slots.acquire()
                calls.start_soon(self._released, partial(self._batch, event))
            # A server's Connection decodes nothing else.

    async def _upgrade_call(self, call: Request) -> bool:
        # The reader is paused (bytes after this request may not be JSON) and every
        # slot is taken, which waits for the calls sent before this one to reply: their
        # replies must not be lost, and nothing may be written after the upgrade.
        for _ in range(self._max_concurrent):
            await self._slots.acquire()
        try:
            return await self._call(call)
        finally:
            for _ in range(self._max_concurrent):
                self._slots.release()

    async def _queue_out(self, item: _Outgoing) -> None:
        # Without a schedule point when there is room: the call's task ends here, and a
        # step for nothing was a fifth of what a call costs the daemon. (The reader's
        # checkpoint for a slot stays: it starts pipelined calls in the order they came.)
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            await self._send.send(item)

    async def _released(self, job: Callable[[], Awaitable[object]]) -> None:
        try:
            await job()
        finally:
            self._slots.release()

    def _context(self, call: Request | Notification) -> CallContext:
        return CallContext(
            method=call.method,
            creds=self.creds,
            access=self.access,
            connection=self,
            request_id=call.id if isinstance(call, Request) else None,
            is_notification=isinstance(call, Notification),
        )

    async def _call(self, call: Request | Notification) -> bool:
        ctx = self._context(call)
        reply = await self._registry.dispatch(call, ctx)
        if reply is None:
            return False
        after = ctx.after_reply if isinstance(reply, Response) else None
        return await self._reply(reply, after)

    async def _batch(self, batch: Batch) -> None:
        replies: list[Response | ErrorResponse] = []
        for item in batch.messages:
            if isinstance(item, Invalid):
                replies.append(item.reply)
            elif isinstance(item, Request | Notification):
                method = self._registry.get(item.method)
                if method is not None and method.upgrade:
                    if isinstance(item, Request):
                        replies.append(_refuse_in_batch(item))
                    continue
                reply = await self._registry.dispatch(item, self._context(item))
                if reply is not None:
                    replies.append(self._encodable(reply))
        if replies:
            await self._queue_out(_Outgoing(self._proto.send(Batch(tuple(replies)))))

    def _encodable(self, reply: Response | ErrorResponse) -> Response | ErrorResponse:
        """*reply*, or an internal error in its place if it cannot be encoded."""
        try:
            encode(reply)
        except LocalProtocolError as exc:
            incident = secrets.token_hex(4)
            LOGGER.exception("rpc_reply_unencodable", error=str(exc), incident=incident)
            data = {"type": "InternalError", "incident": incident}
            message = f"internal error (incident {incident})"
            return ErrorResponse(reply.id, ErrorObject(ErrorCode.INTERNAL_ERROR, message, data))
        return reply

    async def _reply(
        self, reply: Response | ErrorResponse, after: AfterReply | None = None
    ) -> bool:
        # Encode once: a status of 500 guests is a large reply, and encoding it a second
        # time only to prove it encodes doubled its cost.
        try:
            data = self._proto.send(reply)
        except LocalProtocolError:
            safe = self._encodable(reply)
            if safe is reply:
                raise  # not an encoding problem
            after = None
            data = self._proto.send(safe)
        await self._queue_out(_Outgoing(data, after))
        return after is not None


def _refuse_in_batch(request: Request) -> ErrorResponse:
    message = f"{request.method} takes over the connection and cannot be called in a batch"
    return ErrorResponse(request.id, ErrorObject(ErrorCode.INVALID_REQUEST, message))


# --------------------------------------------------------------------------- listening


async def _clear_stale(path: str) -> None:
    """Remove a socket left by a dead server; refuse to touch a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUseError(f"{path} exists and is not a socket; refusing to replace it")
    with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM) as probe:
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)
                LOGGER.info("rpc_stale_socket_removed", path=path)
                return
            except FileNotFoundError:
                return
            except PermissionError:
                raise SocketInUseError(
                    f"{path} belongs to another server (permission denied); refusing to start"
                ) from None
    raise SocketInUseError(f"another server is listening on {path}; refusing to start")


async def _listen_unix(path: str, mode: int, group: int | None) -> trio.socket.SocketType:
    await _clear_stale(path)
    # The socket appears at *path* only once it listens. Between bind(2) and listen(2)
    # a connect is refused, and a client (an rc.d script polling for the socket)
    # would report a daemon that is starting as one not running. So it is bound under
    # a private name in the same directory, given its group and mode, set listening,
    # and then linked to *path*: link(2), unlike rename(2), fails when *path* exists,
    # so of two daemons started at once only one gets it, as bind(2) decided before.
    staging = _staging_name(path)
    if len(os.fsencode(staging)) >= _SUN_PATH_MAX:
        staging = path  # no room for the private name: bind in place, as before
    else:
        _unlink_quietly(staging)  # left by an earlier daemon of this pid that died here
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    bound = ""
    try:
        # The umask closes the window between bind and chmod in which the socket would
        # carry the process's default mode.
        old = os.umask(0o177)
        try:
            await sock.bind(staging)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SocketInUseError(
                    f"another server is listening on {path}; refusing to start"
                ) from None
            raise
        finally:
            os.umask(old)
        bound = staging
        if group is not None:
            os.chown(staging, -1, group)
        os.chmod(staging, mode)
        sock.listen(BACKLOG)
        if staging != path:
            try:
                os.link(staging, path)
            except FileExistsError:
                raise SocketInUseError(
                    f"another server is listening on {path}; refusing to start"
                ) from None
            bound = path
            os.unlink(staging)
    except BaseException:
        sock.close()
        if bound:
            _unlink_quietly(bound)
        raise
    return sock


#: sun_path's size on FreeBSD (104) and Linux (108): the smaller bounds both.
_SUN_PATH_MAX = 104


def _staging_name(path: str) -> str:
    """The private name a socket for *path* is bound under until it listens."""
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.{os.getpid()}")


def _unlink_quietly(path: str, ident: tuple[int, int] | None = None) -> None:
    try:
        if ident is not None:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) != ident:
                return  # someone else's socket now
        os.unlink(path)
    except FileNotFoundError:
        pass


async def _serve_one(
    stream: trio.SocketStream,
    *,
    registry: Registry,
    authorize: Authorize,
    max_message: int,
    max_concurrent: int,
    queue_size: int,
) -> None:
    try:
        try:
            creds = peer_credentials(stream.socket.fileno())
        except (OSError, ValueError) as exc:
            LOGGER.warning("rpc_peer_unknown", error=str(exc))
            return
        access = authorize(creds)
        if access not in ("rw", "ro"):
            if access is not None:
                LOGGER.error("rpc_authorize_bad_answer", answer=repr(access))
            await _refuse(stream, creds)
            return
        conn = ServerConnection(
            stream,
            registry,
            creds,
            access,
            max_message=max_message,
            max_concurrent=max_concurrent,
            queue_size=queue_size,
        )
        LOGGER.debug("rpc_connected", uid=creds.uid, pid=creds.pid, access=access)
        await conn.run()
    except Exception:
        # serve_listeners would let this take down every connection and the listener.
        LOGGER.exception("rpc_connection_failed")
    finally:
        await trio.aclose_forcefully(stream)


async def _refuse(stream: trio.abc.HalfCloseableStream, creds: PeerCredentials) -> None:
    LOGGER.info("rpc_connection_refused", uid=creds.uid, gid=creds.gid, pid=creds.pid)
    err = PermissionDeniedError(
        f"permission denied: uid {creds.uid} (gid {creds.gid}) may not use this socket"
    )
    reply = ErrorResponse(None, ErrorObject(err.code, err.message, err.to_data()))
    # Closing at once would race the client's first request: it would meet EPIPE on
    # writing, or a reset on reading, before it read why. So: say why, stop writing,
    # and swallow what it sends until it hangs up, within a bound.
    with trio.move_on_after(REFUSAL_LINGER):
        try:
            await stream.send_all(encode(reply))
            await stream.send_eof()
            swallowed = 0
            while swallowed < REFUSAL_DRAIN and (chunk := await stream.receive_some()):
                swallowed += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def serve_unix(
    path: str,
    registry: Registry,
    *,
    authorize: Authorize,
    mode: int = 0o660,
    group: int | None = None,
    max_message: int = MAX_MESSAGE,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *registry* on the Unix socket *path* until cancelled.

    Use ``await nursery.start(serve_unix, ...)``: it returns the path once the socket
    accepts connections. The socket is removed when the server stops.

    Args:
        path: where to create the socket (its directory must exist).
        registry: the methods to offer.
        authorize: decides each connection's access from its peer credentials; None
            refuses it with a -32030 error reply.
        mode: the socket's permission bits.
        group: the socket's group (None keeps the process's).
        max_message: the longest request line accepted, in bytes.
        max_concurrent: requests of one connection that may run at once.
        queue_size: outgoing lines one connection may have waiting.

    Raises:
        SocketInUseError: another server listens on *path*, or *path* is not a socket.
    """
    if max_concurrent < 1 or queue_size < 1:
        raise ValueError("max_concurrent and queue_size: must be >= 1")
    sock = await _listen_unix(path, mode, group)
    st = os.lstat(path)
    ident = (st.st_dev, st.st_ino)
    listener = trio.SocketListener(sock)
    handler = partial(
        _serve_one,
        registry=registry,
        authorize=authorize,
        max_message=max_message,
        max_concurrent=max_concurrent,
        queue_size=queue_size,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, [listener])
            LOGGER.info("rpc_listening", path=path, mode=oct(mode), group=group)
            task_status.started(path)
    finally:
        sock.close()
        _unlink_quietly(path, ident)
