"""The owner of a guest's serial console (the B side of its nmdm pair).

The guest actor holds the B side from before bhyve starts until the guest is gone, and
this object always drains it: bhyve never blocks on its console, but output that nobody
reads is lost (nmdm drops it once the tty queue fills), and users want the boot messages
of a guest that crashed at 3 a.m. Everything read goes to

* a ring buffer of the last ``ring_size`` bytes, for ``console.tail``;
* ``NAME.console.log``, rotated by size;
* every attached reader (bounded queues: a reader that falls behind loses bytes, never
  the guest or the other readers).

Many readers, one writer: the writer is whoever attached last in read-write mode
(explicit takeover); a displaced writer is told so and keeps reading.
"""

from __future__ import annotations

import errno
import os

import attrs
import trio

from supervisor.host import Host
from supervisor.log import get_logger
from supervisor.vmm.platform.consolepair import ensure_pair, open_console

log = get_logger("bhyvesupd.console")

#: Bytes queued per attached reader before it starts losing output.
READER_QUEUE = 256
READ_CHUNK = 65536
#: A tty read returns at most one line-discipline buffer (about 4 KiB); while more is
#: waiting, reads are gathered up to this many bytes before the ring, the log and the
#: readers see them, so a flood costs one log write and one message per gather.
GATHER = 256 * 1024


class ConsoleTakenOver(Exception):
    """Another client took the console over for writing."""


@attrs.define(eq=False)
class Attachment:
    """One client attached to the console."""

    id: int
    send: trio.MemorySendChannel[bytes]
    receive: trio.MemoryReceiveChannel[bytes]
    writer: bool
    lost: int = 0


@attrs.define(eq=False)
class ConsoleLog:
    """An append-only log rotated by size: NAME.console.log, .1, .2, ..."""

    path: str
    max_bytes: int
    keep: int
    _fd: int | None = None
    _size: int = 0

    def write(self, data: bytes) -> None:
        if self._fd is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._size = os.fstat(self._fd).st_size
        os.write(self._fd, data)
        self._size += len(data)
        if self._size >= self.max_bytes:
            self.rotate()

    def rotate(self) -> None:
        self.close()
        for i in range(self.keep - 1, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i + 1}")
        if self.keep > 0 and os.path.exists(self.path):
            os.replace(self.path, f"{self.path}.1")
        elif os.path.exists(self.path):
            os.unlink(self.path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._size = 0


@attrs.define(eq=False)
class Console:
    """The supervisor's side of one guest console.

    Args:
        host: where the console device lives.
        b_path: the FreeBSD path of the B side (``/dev/nmdm-web1.1B``).
        log: the console log.
        ring_size: bytes kept in memory for :meth:`tail`.
    """

    host: Host
    b_path: str
    log: ConsoleLog
    ring_size: int = 256 * 1024
    ring: bytearray = attrs.field(factory=bytearray)
    #: Total bytes ever read: lets clients ask for output "since offset N".
    total: int = 0
    _stream: trio.lowlevel.FdStream | None = None
    _fd: int = -1
    _attachments: dict[int, Attachment] = attrs.field(factory=dict)
    _next_id: int = 1
    _write_lock: trio.Lock = attrs.field(factory=trio.Lock)

    @property
    def is_open(self) -> bool:
        return self._stream is not None

    async def open(self) -> None:
        """Make sure the pair exists and open our side (idempotent)."""
        if self._stream is not None:
            return
        await ensure_pair(self.host, self.b_path)
        fd = open_console(self.host, self.b_path)
        self._stream = trio.lowlevel.FdStream(fd)
        self._fd = fd

    async def run(self) -> None:
        """Drain the console for as long as it is open; returns when it is closed."""
        while self._stream is not None:
            stream = self._stream
            try:
                data = await stream.receive_some(READ_CHUNK)
            except (trio.ClosedResourceError, trio.BrokenResourceError, OSError) as exc:
                if self._stream is not stream:
                    continue  # closed or replaced under us
                # A tty whose other side vanished reads EOF/EIO; the guest's state is
                # decided by bhyve's exit, not by the console, so just try again later.
                cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
                if isinstance(cause, OSError) and cause.errno not in (errno.EIO, errno.ENXIO):
                    log.warning("console_read_error", path=self.b_path, error=str(cause))
                await trio.sleep(0.2)
                continue
            if not data:
                await trio.sleep(0.2)
                continue
            self._record(self._gather(data) if self._stream is stream else data)

    def _gather(self, data: bytes) -> bytes:
        """*data* and whatever else the tty holds right now, up to :data:`GATHER`."""
        if len(data) < 1024:
            return data  # an interactive trickle: nothing more is waiting
        parts = [data]
        size = len(data)
        while size < GATHER:
            try:
                more = os.read(self._fd, READ_CHUNK)
            except OSError:
                break  # nothing waiting (EAGAIN), or an error the next receive reports
            if not more:
                break
            parts.append(more)
            size += len(more)
        return b"".join(parts)

    def _record(self, data: bytes) -> None:
        self.total += len(data)
        self.ring += data
        if len(self.ring) > self.ring_size:
            del self.ring[: len(self.ring) - self.ring_size]
        try:
            self.log.write(data)
        except OSError as exc:
            # A full log filesystem must not stop the console (or the guest).
            log.warning("console_log_write_failed", path=self.log.path, error=exc.strerror)
        for att in list(self._attachments.values()):
            try:
                if att.lost:
                    att.send.send_nowait(f"\r\n[console: {att.lost} bytes lost]\r\n".encode())
                    att.lost = 0
                att.send.send_nowait(data)
            except trio.WouldBlock:
                att.lost += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._attachments.pop(att.id, None)

    def tail(self, nbytes: int | None = None) -> bytes:
        """The last *nbytes* (default: all) bytes of console output kept in memory."""
        if nbytes is None or nbytes >= len(self.ring):
            return bytes(self.ring)
        return bytes(self.ring[-nbytes:]) if nbytes > 0 else b""

    def attach(self, *, writer: bool) -> Attachment:
        """Attach a client; a writer takes writing over from any previous one."""
        send, receive = trio.open_memory_channel[bytes](READER_QUEUE)
        att = Attachment(self._next_id, send, receive, writer)
        self._next_id += 1
        if writer:
            for other in self._attachments.values():
                if other.writer:
                    other.writer = False
                    try:
                        other.send.send_nowait(b"\r\n[console: taken over by another client]\r\n")
                    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
        self._attachments[att.id] = att
        return att

    def detach(self, att: Attachment) -> None:
        self._attachments.pop(att.id, None)
        att.send.close()

    @property
    def attachments(self) -> int:
        return len(self._attachments)

    async def write(self, data: bytes, att: Attachment | None = None) -> None:
        """Send *data* to the guest.

        Raises:
            ConsoleTakenOver: *att* is no longer the writer.
            trio.ClosedResourceError: the console is not open.
        """
        if att is not None and not att.writer:
            raise ConsoleTakenOver("another client has taken the console over")
        if self._stream is None:
            raise trio.ClosedResourceError("console is not open")
        async with self._write_lock:
            await self._stream.send_all(data)

    async def aclose(self) -> None:
        """Close our side (the guest is gone) and end every attachment."""
        stream, self._stream = self._stream, None
        self._fd = -1
        if stream is not None:
            await stream.aclose()
        for att in list(self._attachments.values()):
            self.detach(att)
        self.log.close()
