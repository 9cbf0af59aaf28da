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
character devices, which sendfile does not read) is read with ``pread`` in worker
threads, in large chunks, the next chunk read while the previous one is being sent. The
daemon's send buffer is enlarged for the stream: FreeBSD's default for a local stream
socket is 8 KiB, which would cost a wakeup per 8 KiB.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable
from typing import Final

import structlog
import trio

__all__ = ["CHUNK", "ReadInto", "send_range"]

LOGGER = structlog.stdlib.get_logger("bhyvesupd.rpc")

#: Bytes per read on the daemon's side: large enough that a thread hop per chunk is noise.
CHUNK: Final = 4 << 20

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


class _Unsendable(Exception):
    """sendfile(2) cannot send from this file on this socket."""


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    inner = getattr(stream, "transport_stream", stream)
    return inner.socket if isinstance(inner, trio.SocketStream) else None


async def _sendfile(sock: trio.socket.SocketType, fd: int, offset: int, size: int) -> int:
    """Send with sendfile(2) on the non-blocking *sock*; the bytes sent.

    Raises:
        _Unsendable: before any byte went out, the kernel refused the pair.
    """
    sent = 0
    while sent < size:
        await trio.lowlevel.wait_writable(sock)
        try:
            n = os.sendfile(sock.fileno(), fd, offset + sent, min(CHUNK, size - sent))
        except BlockingIOError:
            continue
        except OSError as exc:
            if sent == 0 and exc.errno in _NO_SENDFILE:
                raise _Unsendable from exc
            raise
        if n == 0:
            break  # the file ended early
        sent += n
    return sent


ReadInto = Callable[[int, memoryview, int], int]
"""``(fd, buffer, offset) -> bytes read``, like ``os.preadv(fd, [buffer], offset)``."""


def _preadinto(fd: int, buf: memoryview, offset: int) -> int:
    return os.preadv(fd, [buf], offset)


async def send_range(
    stream: trio.abc.Stream,
    fd: int,
    offset: int,
    size: int,
    *,
    read: ReadInto | None = None,
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
        what: names the source in the log.

    Returns:
        The bytes sent (less than *size* only when the source or the client failed).
    """
    read_into = read or _preadinto
    sent = 0
    by_sendfile = False
    # Two buffers, reused: one is sent while the next chunk is read into the other
    # (a fresh 4 MiB object per chunk would be mapped and faulted in each time).
    buffers: list[bytearray] = []
    filled = 0
    failed: list[Exception] = []

    def fill(at: int, buf: bytearray) -> int:
        return read_into(fd, memoryview(buf)[: min(CHUNK, size - at)], offset + at)

    async def ahead(at: int, buf: bytearray) -> None:
        nonlocal filled
        try:
            filled = await trio.to_thread.run_sync(fill, at, buf)
        except OSError as exc:
            failed.append(exc)

    async def send(data: memoryview) -> None:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            failed.insert(0, exc)

    try:
        sock = _socket_of(stream)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            if read is None and stat.S_ISREG(os.fstat(fd).st_mode):
                with contextlib.suppress(_Unsendable):
                    sent = await _sendfile(sock, fd, offset, size)
                    by_sendfile = True
        if not by_sendfile and size:
            buffers += (bytearray(min(CHUNK, size)), bytearray(min(CHUNK, size)))
            filled = await trio.to_thread.run_sync(fill, 0, buffers[0])
        current = 0
        while filled:
            n, filled = filled, 0
            # Read the next chunk while this one goes out. Each side keeps its failure
            # for after the nursery, so it is raised bare, not in a group.
            async with trio.open_nursery() as nursery:
                if sent + n < size:
                    nursery.start_soon(ahead, sent + n, buffers[1 - current])
                nursery.start_soon(send, memoryview(buffers[current])[:n])
            if failed and not isinstance(failed[0], OSError):
                raise failed[0]
            sent += n
            current = 1 - current
            if failed:
                raise failed[0]
        if sent < size:
            LOGGER.warning("bulk_stream_short", source=what, sent=sent, size=size)
    except _GONE:
        LOGGER.debug("bulk_stream_client_gone", source=what, sent=sent, size=size)
    except OSError as exc:
        LOGGER.warning("bulk_stream_read_failed", source=what, sent=sent, error=str(exc))
    finally:
        os.close(fd)
        with trio.CancelScope(shield=True):
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
    return sent
