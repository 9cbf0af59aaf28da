"""Bulk byte transfers after an upgraded reply: a range of an open file, raw on the socket.

Theory of operation: a method called with ``stream: true`` checks everything it can (the
guest, the disk, the range) and opens the file *before* it replies, so every refusal is
an ordinary JSON error naming its field. Its reply says how many bytes follow; then the
connection leaves JSON and carries exactly that many raw bytes, and the daemon closes it.
Once the reply is written nothing can be reported in-band: if the source fails mid-way
(a VM destroyed during the read), the daemon closes the connection early and the client,
counting bytes, sees a short stream (``Client.call_stream`` raises ShortStreamError).

Reads run in worker threads (a disk or ``/dev/vmm`` read may block), in large chunks, and
the next chunk is read while the previous one is being sent, so the socket and the disk
work at the same time. ``pread`` is used rather than ``sendfile(2)``: FreeBSD's sendfile
only reads regular files, and zvols and ``/dev/vmm/NAME`` are character devices.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

import structlog
import trio

__all__ = ["CHUNK", "send_range"]

LOGGER = structlog.stdlib.get_logger("bhyvesupd.rpc")

#: Bytes per read on the daemon's side: large enough that a thread hop per chunk is noise.
CHUNK: Final = 4 << 20


async def send_range(
    stream: trio.abc.Stream,
    fd: int,
    offset: int,
    size: int,
    *,
    read: Callable[[int, int, int], bytes] = os.pread,
    what: str = "",
) -> int:
    """Send *size* bytes of the open *fd* from *offset* on *stream*, then close both.

    Args:
        stream: the upgraded connection.
        fd: a file descriptor opened for reading; this function owns and closes it.
        offset: where in *fd* to start.
        size: how many bytes to send.
        read: ``pread``-like (fd, size, offset) -> bytes; it may raise OSError, which
            ends the stream early (the client notices the short count).
        what: names the source in the log.

    Returns:
        The bytes sent (less than *size* only when the source or the client failed).
    """
    sent = 0
    pending: bytes = b""
    failed: list[Exception] = []

    def next_chunk(at: int) -> bytes:
        return read(fd, min(CHUNK, size - at), offset + at)

    async def ahead(at: int) -> None:
        nonlocal pending
        try:
            pending = await trio.to_thread.run_sync(next_chunk, at)
        except OSError as exc:
            failed.append(exc)

    async def send(data: bytes) -> None:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            failed.insert(0, exc)

    try:
        if size:
            pending = await trio.to_thread.run_sync(next_chunk, 0)
        while pending:
            data, pending = pending, b""
            # Read the next chunk while this one goes out. Each side keeps its failure
            # for after the nursery, so it is raised bare, not in a group.
            async with trio.open_nursery() as nursery:
                if sent + len(data) < size:
                    nursery.start_soon(ahead, sent + len(data))
                nursery.start_soon(send, data)
            if failed and not isinstance(failed[0], OSError):
                raise failed[0]
            sent += len(data)
            if failed:
                raise failed[0]
        if sent < size:
            LOGGER.warning("bulk_stream_short", source=what, sent=sent, size=size)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
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
