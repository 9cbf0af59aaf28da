"""A blocking JSON-RPC client for the daemon's socket: stdlib only, no trio.

The CLI runs one command and exits, so it should start fast and pull in nothing it does
not need; this client is a plain ``AF_UNIX`` socket around the shared sans-IO
:class:`~supervisor.rpc.protocol.Connection`. Calls are sequential. Notifications that
arrive while a call waits for its reply are kept, in order, for :meth:`Client.notifications`.

Errors are typed: an error reply raises the :mod:`supervisor.errors` class its code names
(see :func:`supervisor.rpc.errors.error_from_object`), so ``except GuestNotFoundError``
works across the socket.
"""

from __future__ import annotations

import array
import errno
import json
import socket
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import Any, BinaryIO, Final, NoReturn

from supervisor._sockutil import connect_unix as _connect_retrying
from supervisor._sockutil import recv_line
from supervisor.errors import InvalidValueError, PermissionDeniedError
from supervisor.host import SOCKET_PATH
from supervisor.rpc.errors import (
    ConnectionLostError,
    DaemonNotRunningError,
    InvalidParamsError,
    RequestTimeoutError,
    error_from_object,
)
from supervisor.rpc.protocol import (
    NEED_DATA,
    Batch,
    Connection,
    ConnectionClosed,
    ErrorResponse,
    Event,
    Invalid,
    Notification,
    RemoteProtocolError,
    Request,
    Response,
)

__all__ = ["DEFAULT_TIMEOUT", "MAX_REPLY", "Client", "connect_unix"]

#: Seconds a call waits for its reply by default.
DEFAULT_TIMEOUT: Final = 60.0
#: The longest reply accepted, in bytes (replies may be larger than requests).
MAX_REPLY: Final = 64 << 20

RECEIVE_SIZE: Final = 64 * 1024


def connect_unix(path: str, timeout: float | None = DEFAULT_TIMEOUT) -> socket.socket:
    """A socket connected to the daemon at *path*, with errors that say what is wrong.

    Raises:
        DaemonNotRunningError: no socket at *path*, or nobody listening on it.
        PermissionDeniedError: the socket exists but this user may not open it.
        RequestTimeoutError: the daemon's accept queue stayed full for *timeout* s.
        InvalidValueError: *path* is too long for a Unix socket address.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        _connect_retrying(sock, path, timeout)
    except FileNotFoundError:
        sock.close()
        raise DaemonNotRunningError(f"daemon not running (no socket at {path})") from None
    except ConnectionRefusedError:
        sock.close()
        raise DaemonNotRunningError(f"daemon not running (stale socket at {path})") from None
    except PermissionError:
        sock.close()
        raise PermissionDeniedError(f"permission denied on {path}") from None
    except TimeoutError:
        sock.close()
        raise RequestTimeoutError(
            f"the daemon at {path} did not accept the connection within {timeout:g} s "
            "(its accept queue stayed full)"
        ) from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.ENAMETOOLONG or "too long" in str(exc):
            raise InvalidValueError(
                f"socket path too long for AF_UNIX: {path}", field="path"
            ) from None
        raise
    return sock


class ShortStreamError(ConnectionLostError):
    """The daemon closed the stream before all the announced bytes arrived."""


def receive_exact(sock: socket.socket, rest: bytes, size: int, sink: BinaryIO) -> int:
    """Write exactly *size* streamed bytes to *sink*: *rest* (already read) first.

    Blocking; for :meth:`Client.call_stream` after the upgraded reply.

    Raises:
        ShortStreamError: the daemon closed the connection early.
        OSError: the socket or *sink* failed.
    """
    if len(rest) > size:
        raise ShortStreamError(f"the daemon sent {len(rest)} bytes, announced {size}")
    done = len(rest)
    if rest:
        sink.write(rest)
    buf = bytearray(min(size - done, 1 << 20) or 1)
    view = memoryview(buf)
    while done < size:
        n = sock.recv_into(view, min(len(buf), size - done))
        if n == 0:
            raise ShortStreamError(f"the daemon ended the stream after {done} of {size} bytes")
        sink.write(view[:n])
        done += n
    return done


class Client:
    """A connection to the daemon.

    Args:
        path: the daemon's socket.
        timeout: seconds to wait for each reply (None: forever).
        max_message: the longest reply accepted, in bytes.

    Raises:
        DaemonNotRunningError, PermissionDeniedError: see :func:`connect_unix`.
    """

    def __init__(
        self,
        path: str = SOCKET_PATH,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_message: int = MAX_REPLY,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = connect_unix(path, timeout)
        self._proto = Connection("client", max_message=max_message)
        self._notes: deque[Notification] = deque()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionLostError(f"the connection to {self.path} is closed")
        return self._sock

    def _next_event(self, what: str, timeout: float | None) -> Event:
        sock = self._socket()
        while True:
            event = self._proto.next_event()
            if event is not NEED_DATA:
                return event
            sock.settimeout(timeout)
            try:
                data = sock.recv(RECEIVE_SIZE)
            except TimeoutError:
                raise RequestTimeoutError(f"no {what} within {timeout:g} s") from None
            except ConnectionResetError:
                data = b""
            self._proto.receive_data(data)

    def call(self, method: str, /, **params: Any) -> Any:
        """Call *method* with named *params* and return its result.

        Raises:
            SupervisorError: the error reply, as its typed subclass.
            ConnectionLostError: the daemon closed the connection first.
            RequestTimeoutError: no reply within the timeout.
            RemoteProtocolError: the daemon's reply broke the protocol.
        """
        sock = self._socket()
        id = self._proto.next_id()
        data = self._proto.send(Request(id=id, method=method, params=params or None))
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self._raise_parting_error(method)
        while True:
            try:
                event = self._next_event(f"reply to {method}", self.timeout)
            except RemoteProtocolError:
                self.close()
                raise
            if isinstance(event, Notification):
                self._notes.append(event)
            elif isinstance(event, Response | ErrorResponse) and event.id == id:
                if isinstance(event, ErrorResponse):
                    raise error_from_object(event.error)
                return event.result
            elif isinstance(event, ErrorResponse) and event.id is None:
                # The daemon could not read our request, or refused the connection.
                raise error_from_object(event.error)
            elif isinstance(event, ConnectionClosed):
                self.close()
                raise ConnectionLostError(
                    f"the daemon closed the connection before replying to {method}"
                )
            elif isinstance(event, Invalid):
                self.close()
                raise RemoteProtocolError(f"bad reply from the daemon: {event.error.message}")
            elif isinstance(event, Batch):
                self.close()
                raise RemoteProtocolError("the daemon sent a batch nobody asked for")

    def _raise_parting_error(self, method: str) -> NoReturn:
        """The daemon hung up on us: raise what it said last (a refusal), if anything."""
        try:
            while True:
                event = self._next_event("parting words", 1.0)
                if isinstance(event, ErrorResponse) and event.id is None:
                    raise error_from_object(event.error)
                if isinstance(event, ConnectionClosed):
                    break
        except (RequestTimeoutError, RemoteProtocolError, OSError):
            pass
        finally:
            self.close()
        raise ConnectionLostError(f"the daemon closed the connection ({method})")

    def notify(self, method: str, /, **params: Any) -> None:
        """Send a notification (no reply is sent or awaited)."""
        data = self._proto.send(Notification(method=method, params=params or None))
        try:
            self._socket().sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self._raise_parting_error(method)

    def notifications(self, *, timeout: float | None = None) -> Iterator[Notification]:
        """The daemon's notifications, as they come.

        Ends when the daemon closes the connection, or when *timeout* seconds pass
        without one (None: wait forever).
        """
        while True:
            while self._notes:
                yield self._notes.popleft()
            if self._sock is None:
                return
            try:
                event = self._next_event("notification", timeout)
            except RequestTimeoutError:
                return
            if isinstance(event, Notification):
                yield event
            elif isinstance(event, ConnectionClosed):
                self.close()
                return
            elif isinstance(event, ErrorResponse) and event.id is None:
                raise error_from_object(event.error)
            # Anything else is a stray reply; a call would have consumed its own.

    def call_stream(self, method: str, sink: BinaryIO, /, **params: Any) -> dict[str, Any]:
        """Call *method* with ``stream=True`` and write the raw bytes that follow to *sink*.

        The daemon replies with the byte count in ``size``, sends exactly that many bytes
        and closes the connection: this client is closed afterwards.

        Returns:
            The reply (without data).

        Raises:
            SupervisorError: the daemon refused (nothing was written to *sink*).
            ShortStreamError: the daemon ended the stream early.
        """
        reply = self.call(method, **params, stream=True)
        if not isinstance(reply, dict) or not isinstance(reply.get("size"), int):
            self.close()
            raise RemoteProtocolError(f"{method}: a streamed reply without a size: {reply!r}")
        sock, rest = self.raw_socket()
        try:
            receive_exact(sock, rest, reply["size"], sink)
        finally:
            sock.close()
        return reply

    def call_to_fd(self, method: str, out_fd: int, /, **params: Any) -> dict[str, Any]:
        """Call *method* with ``to_fd=True`` and have the daemon write the bytes into
        *out_fd* (a file or pipe open for writing) itself: one copy instead of the
        two of a stream through the socket.

        The daemon replies with the byte count in ``size``; this client then hands
        *out_fd* over (one byte with ``SCM_RIGHTS``) and reads the daemon's last line,
        ``{"written": N}``. The client is closed afterwards.

        Returns:
            The reply, with ``written`` added.

        Raises:
            SupervisorError: the daemon refused (nothing was written).
            ShortStreamError: fewer than ``size`` bytes were written (the message says
                why, as the daemon told it).
        """
        reply = self.call(method, **params, to_fd=True)
        if not isinstance(reply, dict) or not isinstance(reply.get("size"), int):
            self.close()
            raise RemoteProtocolError(f"{method}: a to_fd reply without a size: {reply!r}")
        sock, rest = self.raw_socket()
        with sock:
            if rest:
                raise RemoteProtocolError(f"{method}: the daemon sent data before the descriptor")
            sock.sendmsg(
                [b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [out_fd]))]
            )
            line = recv_line(sock)
        try:
            answer = json.loads(line)
            written = int(answer["written"])
        except (ValueError, KeyError, TypeError):
            raise ShortStreamError(
                f"{method}: the daemon ended without saying what it wrote: {line!r}"
            ) from None
        if written != reply["size"] or "error" in answer:
            raise ShortStreamError(
                f"{method}: the daemon wrote {written} of {reply['size']} bytes: "
                f"{answer.get('error', 'short')}"
            )
        return {**reply, "written": written}

    def read_into(self, method: str, sink: BinaryIO, /, **params: Any) -> dict[str, Any]:
        """A bulk read (``domain.memory_peek``, ``domain.block_peek``) into *sink*, a file
        object with a descriptor: the daemon writes into it (:meth:`call_to_fd`); a
        daemon that predates that streams instead (:meth:`call_stream`).

        Raises: as :meth:`call_to_fd`.
        """
        sink.flush()
        try:
            return self.call_to_fd(method, sink.fileno(), **params)
        except InvalidParamsError as exc:
            if getattr(exc, "field", None) != "to_fd":
                raise
        return self.call_stream(method, sink, **params)

    def raw_socket(self) -> tuple[socket.socket, bytes]:
        """Leave JSON after a call that upgraded the connection (console attach).

        Returns:
            The socket (now owned by the caller, blocking, no timeout) and the bytes the
            daemon sent after the reply that were already read; show those first.
        """
        sock = self._socket()
        rest = self._proto.switch_protocol()
        self._sock = None
        sock.settimeout(None)
        return sock, rest

    @property
    def pending_notifications(self) -> int:
        """Notifications received and not yet taken."""
        return len(self._notes)
