"""Bulk byte transfers after an upgraded reply: a range of an open file, raw on the socket.

Theory of operation: a method called with ``stream: true`` checks everything it can (the
guest, the disk, the range) and opens the file *before* it replies, so every refusal is
an ordinary JSON error naming its field. Its reply says how many bytes follow; then the
connection leaves JSON and carries exactly that many raw bytes, and the daemon closes it.
Once the reply is written nothing can be reported in-band: if the source fails mid-way
(a VM destroyed during the read), the daemon closes the connection early and the client,
counting bytes, sees a short stream (``Client.call_stream`` raises ShortStreamError).

A regular file (a disk image) goes out with ``sendfile(2)`` straight from the page cache
to the socket, without passing through the process; FreeBSD's sendfile does not wait for
the disk (pages not yet in memory are sent when they arrive), so it can run on the event
loop between ``wait_writable`` calls. Anything else (zvols and ``/dev/vmm/NAME`` are
character devices, which sendfile does not read) is moved by one worker thread per
stream, ``write`` to the socket and ``poll`` when it is full; a hop to the event loop
per chunk cost half the throughput. The thread checks a stop flag between writes and at
least every :data:`STOP_POLL_MS`, so a daemon shutting down waits that long at most. The
daemon's send buffer is enlarged for the stream: FreeBSD's default for a local stream
socket is 8 KiB, a wakeup per 8 KiB.

Where the thread's bytes come from: a caller may name *mappable* spans of the file,
ranges that ``mmap(2)`` maps (guest RAM: the vmm device maps a system-memory segment at
offset = guest-physical address, one mapping inside one segment, as libvmmapi does for
bhyve). Those bytes are written to the socket straight from a read-only shared mapping,
one copy instead of three (``preadv`` into a buffer, then the buffer into the socket).
The mapping is made a window of at most :data:`MAP_WINDOW` at a time, so streaming a
large guest never holds a mapping of all its memory. Outside the spans (the PCI hole,
device memory), and for the rest of a stream once the kernel has refused a mapping
(``ENODEV``, ``EINVAL``, ``EACCES``...), the thread reads with ``preadv`` as before.
The mapped pages are only ever touched by the kernel inside ``write(2)``: if they go
away under the stream, the write fails with an error instead of the process taking a
SIGBUS. A mapping keeps the VM's memory object alive, so a VM destroyed mid-stream is
noticed at the next window (the mapping is refused, the read fails with ENXIO) and the
stream ends short there, at most a window later than a read-only stream would.
"""

from __future__ import annotations

import array
import contextlib
import errno
import json
import mmap
import os
import select
import socket
import stat
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import structlog
import trio

from supervisor.rpc._streams import PrefixedStream

if TYPE_CHECKING:
    from supervisor.rpc.dispatch import CallContext

__all__ = [
    "CHUNK",
    "FD_TIMEOUT",
    "MAP_WINDOW",
    "ReadInto",
    "reply_with_range",
    "send_range",
    "write_range_to_peer",
]

LOGGER = structlog.stdlib.get_logger("bhyvesupd.rpc")

#: Bytes per read on the daemon's side: large enough that a thread hop per chunk is noise.
CHUNK: Final = 4 << 20

#: The most bytes of a mappable span mapped at once by one stream.
MAP_WINDOW: Final = 32 << 20

#: The send buffer asked for a stream (the kernel may cap it: Linux at net.core.wmem_max,
#: FreeBSD refuses more than kern.ipc.maxsockbuf, 2 MiB by default, and keeps its own).
SEND_BUFFER: Final = 2 << 20

#: sendfile(2) errors that mean "not with this pair of descriptors": use pread instead.
_NO_SENDFILE: Final = frozenset({errno.EINVAL, errno.ENOTSOCK, errno.EOPNOTSUPP, errno.ENOSYS})

_GONE: Final = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    BrokenPipeError,
    ConnectionResetError,
)


#: How long the daemon waits for the client's descriptor after a ``to_fd`` reply (s).
FD_TIMEOUT: Final = 30.0

#: How long the worker thread waits for room in the socket before it looks at its stop flag.
STOP_POLL_MS: Final = 200


class _Unsendable(Exception):
    """sendfile(2) cannot send from this file on this socket."""


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    inner = getattr(stream, "transport_stream", stream)
    return inner.socket if isinstance(inner, trio.SocketStream) else None


async def _sendfile(
    sock: trio.socket.SocketType, fd: int, offset: int, size: int, progress: list[int]
) -> None:
    """Send with sendfile(2) on the non-blocking *sock*, counting in ``progress[0]``.

    Raises:
        _Unsendable: before any byte went out, the kernel refused the pair.
    """
    while progress[0] < size:
        await trio.lowlevel.wait_writable(sock)
        try:
            n = os.sendfile(sock.fileno(), fd, offset + progress[0], min(CHUNK, size - progress[0]))
        except BlockingIOError:
            continue
        except OSError as exc:
            if progress[0] == 0 and exc.errno in _NO_SENDFILE:
                raise _Unsendable from exc
            raise
        if n == 0:
            break  # the file ended early
        progress[0] += n


Span = tuple[int, int]
"""``[start, end)`` of a file, in bytes."""


class _Source:
    """The bytes of *fd* a view at a time: from a mapping inside the *mappable* spans,
    else read into one reused buffer.

    Each view is valid until the next :meth:`view` or :meth:`close`. Used by one thread
    at a time.
    """

    def __init__(self, fd: int, read_into: ReadInto, mappable: Sequence[Span]) -> None:
        self._fd = fd
        self._read_into = read_into
        self._spans = sorted(mappable)
        self._buf: memoryview | None = None
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None
        #: Why mapping was given up (the kernel's refusal), None while it works.
        self.refused: OSError | None = None

    def view(self, pos: int, limit: int) -> memoryview:
        """Up to *limit* (> 0) bytes at *pos*; empty where the file ends."""
        self._unmap()
        if self.refused is None:
            for start, end in self._spans:
                if start <= pos < end:
                    try:
                        return self._mapped(start, pos, min(limit, end - pos))
                    except OSError as exc:
                        self.refused = exc
                    break
                if pos < start:
                    limit = min(limit, start - pos)  # read up to the span, map from there
                    break
        if self._buf is None:
            self._buf = memoryview(bytearray(CHUNK))
        n = self._read_into(self._fd, self._buf[: min(limit, CHUNK)], pos)
        return self._buf[:n]

    def _mapped(self, span_start: int, pos: int, limit: int) -> memoryview:
        # The offset must be page-aligned; spans start on a page, so aligning down stays
        # inside the span (a mapping may not cross one).
        base = max(span_start, pos - pos % mmap.ALLOCATIONGRANULARITY)
        length = min(pos + limit, base + MAP_WINDOW) - base
        self._map = mmap.mmap(
            self._fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=base
        )
        self._view = memoryview(self._map)[pos - base :]
        return self._view

    def _unmap(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._map is not None:
            self._map.close()
            self._map = None

    def close(self) -> None:
        """Drop the current mapping (the file descriptor stays the caller's)."""
        self._unmap()


def _pump(
    sockfd: int, offset: int, size: int, source: _Source, stop: threading.Event, progress: list[int]
) -> None:
    """Blocking: write until *size* bytes went out, the file ended or *stop*.

    *progress* holds the bytes sent so far (read by the caller after a failure).
    Raises whatever the read or the write raised.
    """
    poller = select.poll()
    poller.register(sockfd, select.POLLOUT)
    out = memoryview(b"")
    try:
        while progress[0] < size and not stop.is_set():
            out = source.view(offset + progress[0], size - progress[0])
            if not out:
                return  # the file ended early
            while out and not stop.is_set():
                try:
                    k = os.write(sockfd, out)
                except BlockingIOError:
                    poller.poll(STOP_POLL_MS)
                    continue
                out = out[k:]
                progress[0] += k
            out.release()
    finally:
        out.release()  # a view into a mapping keeps it from being closed
        source.close()


async def _pump_in_thread(
    outfd: int,
    offset: int,
    size: int,
    source: _Source,
    progress: list[int],
    stop: threading.Event | None = None,
) -> None:
    stop = stop or threading.Event()
    token = trio.lowlevel.current_trio_token()
    finished = trio.Event()

    def work() -> None:
        try:
            _pump(outfd, offset, size, source, stop, progress)
        finally:
            token.run_sync_soon(finished.set)

    try:
        await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    except trio.Cancelled:
        # The thread uses fd and the socket until it has stopped: wait for it.
        stop.set()
        with trio.CancelScope(shield=True):
            await finished.wait()
        raise


ReadInto = Callable[[int, memoryview, int], int]
"""``(fd, buffer, offset) -> bytes read``, like ``os.preadv(fd, [buffer], offset)``."""


def _preadinto(fd: int, buf: memoryview, offset: int) -> int:
    return os.preadv(fd, [buf], offset)


async def _via_loop(
    stream: trio.abc.Stream,
    offset: int,
    size: int,
    source: _Source,
    progress: list[int],
) -> None:
    """Any other stream (no socket to write to from a thread): read in a worker thread,
    send from the event loop, a view at a time."""
    view = memoryview(b"")
    try:
        while progress[0] < size:
            view = await trio.to_thread.run_sync(
                source.view, offset + progress[0], size - progress[0]
            )
            if not view:
                return  # the file ended early
            await stream.send_all(view)
            progress[0] += len(view)
            view.release()
    finally:
        view.release()
        source.close()


async def send_range(
    stream: trio.abc.Stream,
    fd: int,
    offset: int,
    size: int,
    *,
    read: ReadInto | None = None,
    mappable: Sequence[Span] = (),
    what: str = "",
) -> int:
    """Send *size* bytes of the open *fd* from *offset* on *stream*, then close both.

    Args:
        stream: the upgraded connection.
        fd: a file descriptor opened for reading; this function owns and closes it.
        offset: where in *fd* to start.
        size: how many bytes to send.
        read: reads into a buffer (see :data:`ReadInto`); it may raise OSError, which
            ends the stream early (the client notices the short count). None: a plain
            ``preadv``, and ``sendfile(2)`` when *fd* is a regular file.
        mappable: spans of *fd* that ``mmap(2)`` may map (page-aligned starts; a
            mapping never crosses a span's end); their bytes are sent from a mapping,
            the rest with *read*.
        what: names the source in the log.

    Returns:
        The bytes sent (less than *size* only when the source or the client failed).
    """
    read_into = read or _preadinto
    source = _Source(fd, read_into, mappable)
    progress = [0]
    try:
        sock = _socket_of(stream)
        if sock is None:
            await _via_loop(stream, offset, size, source, progress)
        else:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            done = False
            if read is None and not mappable and stat.S_ISREG(os.fstat(fd).st_mode):
                with contextlib.suppress(_Unsendable):
                    await _sendfile(sock, fd, offset, size, progress)
                    done = True
            if not done and size:
                await _pump_in_thread(sock.fileno(), offset, size, source, progress)
        sent = progress[0]
        if sent < size:
            LOGGER.warning("bulk_stream_short", source=what, sent=sent, size=size)
    except _GONE:
        LOGGER.debug("bulk_stream_client_gone", source=what, sent=progress[0], size=size)
    except Exception as exc:  # the source failed mid-way (an OSError, or a named error)
        LOGGER.warning(
            "bulk_stream_read_failed",
            source=what,
            sent=progress[0],
            error=str(exc),
            type=type(exc).__name__,
        )
    finally:
        if source.refused is not None:
            LOGGER.info("bulk_stream_unmappable", source=what, reason=source.refused.strerror or "")
        os.close(fd)
        with trio.CancelScope(shield=True):
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
    return progress[0]


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _INT.itemsize
            fds.extend(array.array("i", data[:usable]))
    return fds


_INT = array.array("i")


async def write_range_to_peer(
    stream: trio.abc.Stream,
    fd: int,
    offset: int,
    size: int,
    *,
    read: ReadInto | None = None,
    what: str = "",
) -> int:
    """Write *size* bytes of *fd* from *offset* into a descriptor the client hands over,
    then answer with one JSON line and close both.

    The other way of a bulk read (see the module docstring): after the reply the client
    sends one byte carrying one descriptor (``SCM_RIGHTS``), a file or pipe it opened for
    writing, and the daemon writes the range into it: nothing passes through the socket,
    where a stream costs a copy into it in the daemon and one out of it in the client.
    The daemon only ever writes to what the client opened itself, so nothing is
    reachable that the client could not write.
    The bytes are read, never mapped, even where they could be: a ``write(2)`` from a
    fresh mapping takes a page fault per page inside the kernel's copy, and into a file
    the read is a copy the write needs anyway (measured: bench/peek.py).
    The answer is ``{"written": N}``, with ``"error"`` when the source or the
    descriptor failed (N is then what was written). The client leaving ends the writing.

    Args: as :func:`send_range`.

    Returns:
        The bytes written.
    """
    read_into = read or _preadinto
    source = _Source(fd, read_into, ())
    progress = [0]
    error: str | None = None
    outfd = -1
    sock = _socket_of(stream)
    try:
        if sock is None or (isinstance(stream, PrefixedStream) and stream.pending):
            error = "no descriptor: the connection is not a Unix socket, or data came first"
        else:
            with trio.move_on_after(FD_TIMEOUT):
                _msg, ancdata, _flags, _addr = await sock.recvmsg(
                    1, socket.CMSG_SPACE(4 * _INT.itemsize)
                )
                fds = _received_fds(ancdata)
                for extra in fds[1:]:
                    os.close(extra)
                outfd = fds[0] if fds else -1
            if outfd < 0:
                error = "no descriptor received (send one byte with SCM_RIGHTS after the reply)"
        if error is None and size:
            stop = threading.Event()
            async with trio.open_nursery() as nursery:

                async def client_gone() -> None:
                    # Anything more from the client, or its hang-up, ends the writing.
                    with contextlib.suppress(*_GONE, OSError):
                        await stream.receive_some(1)
                    stop.set()

                nursery.start_soon(client_gone)
                try:
                    await _pump_in_thread(outfd, offset, size, source, progress, stop)
                finally:
                    nursery.cancel_scope.cancel()
            if progress[0] < size:
                error = "the client left" if stop.is_set() else "the source ended early"
    except OSError as exc:
        error = exc.strerror or str(exc)
    except Exception as exc:  # the source failed mid-way (a named error)
        error = str(exc)
    finally:
        source.close()
        if outfd >= 0:
            os.close(outfd)
        os.close(fd)
    if error is not None:
        LOGGER.warning("bulk_write_failed", source=what, written=progress[0], error=error)
    answer: dict[str, object] = {"written": progress[0]}
    if error is not None:
        answer["error"] = error
    with trio.CancelScope(shield=True):
        try:
            await stream.send_all(json.dumps(answer).encode() + b"\n")
            await stream.aclose()
        except (*_GONE, OSError):
            pass
    return progress[0]


def reply_with_range(
    ctx: CallContext,
    fd: int,
    offset: int,
    size: int,
    *,
    key: str,
    to_fd: bool,
    read: ReadInto | None = None,
    mappable: Sequence[Span] = (),
    what: str = "",
) -> dict[str, Any]:
    """Hand a bulk read over to the connection after the reply, and say so.

    Sets ``ctx.after_reply`` to :func:`write_range_to_peer` with *to_fd*, else to
    :func:`send_range`; returns the reply that announces the range (*key* names its
    start: ``offset`` for a disk, ``start`` for guest memory). *fd* is the callee's.
    """

    async def deliver(conn: trio.abc.Stream) -> None:
        if to_fd:
            await write_range_to_peer(conn, fd, offset, size, read=read, what=what)
        else:
            await send_range(conn, fd, offset, size, read=read, mappable=mappable, what=what)

    ctx.after_reply = deliver
    reply: dict[str, Any] = {key: offset, "size": size, "stream": True}
    if to_fd:
        reply["to_fd"] = True
    return reply
