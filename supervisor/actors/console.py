"""The owner of a guest's serial console (the B side of its nmdm pair).

The guest actor holds the B side from before bhyve starts until the guest is gone, and
this object always drains it: bhyve never blocks on its console, but output that nobody
reads is lost (nmdm drops it once the tty queue fills), and users want the boot messages
of a guest that crashed at 3 a.m. Everything read goes to

* a ring buffer of the last ``ring_size`` bytes, for ``console.tail``;
* ``NAME.console.log``, rotated by size;
* every attached reader, through a :class:`ReaderQueue` of its own: a byte budget, so a
  reader that falls behind loses bytes (and is told how many), never holds up the guest
  or the other readers.

Many readers, one writer: the writer is whoever attached last in read-write mode
(explicit takeover); a displaced writer is told so and keeps reading.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from typing import Final

import attrs
import trio

from supervisor._fsutil import open_creating
from supervisor._record import Record
from supervisor.host import Host
from supervisor.log import get_logger
from supervisor.vmm.platform.consolepair import ensure_pair, open_console

log = get_logger("bhyvesupd.console")

#: Bytes of output queued per attached reader before it starts losing the oldest. A
#: budget in bytes, not messages: a guest's console write can be one byte or a 256 KiB
#: gather. A reader that keeps up on average rides out a flood's bursts of this size.
READER_QUEUE: Final = 4 << 20
#: Output is appended to the queue's last piece while that piece is smaller than this, so
#: a trickle of one-byte writes costs bytes, not one queue entry (and object) each.
MERGE_BELOW: Final = 64 * 1024
#: The most a reader takes from its queue at once: it sends this much per wakeup.
READER_PIECE: Final = 1 << 20
READ_CHUNK = 65536
#: A tty read returns at most one line-discipline buffer (about 4 KiB); while more is
#: waiting, reads are gathered up to this many bytes before the ring, the log and the
#: readers see them, so a flood costs one log write and one message per gather.
GATHER = 256 * 1024


class ConsoleTakenOver(Exception):
    """Another client took the console over for writing."""


def loss_notice(nbytes: int) -> bytes:
    """What a reader sees where it lost *nbytes* bytes of output."""
    return f"\r\n[console: {nbytes} bytes lost]\r\n".encode()


TAKEOVER_NOTICE: Final = b"\r\n[console: taken over by another client]\r\n"


@attrs.define(eq=False, repr=False)
class ReaderQueue(Record):
    """Console output waiting for one reader, at most *limit* bytes of it.

    Output is queued in pieces (``bytearray``, merged while small); a notice from the
    supervisor to the reader is queued as ``bytes`` between them, in stream order, and is
    neither counted against the budget nor ever dropped.

    Past the budget the *oldest* output goes: a reader that fell behind most needs what
    the guest prints now (the prompt it will type at, the panic that ended a flood), and
    once the burst is over its screen ends where the guest's console does. What it missed
    is still in the ring (``console.tail``) and the console log. The reader is told the
    exact count: its next piece begins with :func:`loss_notice`.

    Args:
        limit: bytes of output queued at most.
    """

    limit: int = READER_QUEUE
    #: Bytes of output queued now.
    size: int = 0
    #: Bytes dropped since the reader last took a piece (the next notice's count).
    lost: int = 0
    #: Bytes dropped over the queue's life.
    lost_total: int = 0
    closed: bool = False
    _parts: deque[bytearray | bytes] = attrs.field(factory=deque, repr=False)
    _waiting: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, repr=False)

    @property
    def pieces(self) -> int:
        """Entries the queued output and notices take: what merging keeps few."""
        return len(self._parts)

    def put(self, data: bytes) -> None:
        """Queue *data*, dropping the oldest output past the budget.

        Raises:
            trio.ClosedResourceError: the queue was closed.
        """
        if self.closed:
            raise trio.ClosedResourceError("the reader has detached")
        if not data:
            return
        if len(data) > self.limit:
            # Only its end fits; everything queued before it goes too, just below.
            excess = len(data) - self.limit
            self.lost += excess
            self.lost_total += excess
            data = data[excess:]
        tail = self._parts[-1] if self._parts else None
        if isinstance(tail, bytearray) and len(tail) < MERGE_BELOW:
            tail += data
        else:
            self._parts.append(bytearray(data))
        self.size += len(data)
        if self.size > self.limit:
            self._drop(self.size - self.limit)
        self._waiting.unpark_all()

    def notice(self, text: bytes) -> None:
        """Queue a message from the supervisor after the output queued so far."""
        if self.closed:
            return
        self._parts.append(bytes(text))
        self._waiting.unpark_all()

    def close(self) -> None:
        """No more output: the reader gets what is queued, then the end."""
        self.closed = True
        self._waiting.unpark_all()

    def receive_nowait(self, max_bytes: int = READER_PIECE) -> bytearray:
        """The queued output, up to *max_bytes* of it, and any notices on the way.

        Raises:
            trio.WouldBlock: nothing is queued.
            trio.EndOfChannel: nothing is queued and the queue was closed.
        """
        if not self._parts and not self.lost:
            raise trio.EndOfChannel if self.closed else trio.WouldBlock
        if not self.lost and len(self._parts) == 1:
            only = self._parts[0]
            if isinstance(only, bytearray) and len(only) <= max_bytes:
                # The usual case, and a flood's: hand the piece over as it is, no copy.
                self._parts.popleft()
                self.size = 0
                return only
        out = bytearray()
        if self.lost:
            out += loss_notice(self.lost)
            self.lost = 0
        while self._parts and len(out) < max_bytes:
            part = self._parts[0]
            if isinstance(part, bytearray):
                take = max_bytes - len(out)
                if len(part) > take:
                    out += part[:take]
                    del part[:take]
                    self.size -= take
                    break
                self.size -= len(part)
            out += part
            self._parts.popleft()
        return out

    async def receive(self, max_bytes: int = READER_PIECE) -> bytearray:
        """Wait for output and take up to *max_bytes* of it (see :meth:`receive_nowait`).

        Raises:
            trio.EndOfChannel: the queue was closed and everything in it taken.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._parts and not self.lost and not self.closed:
            await self._waiting.park()
        piece = self.receive_nowait(max_bytes)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return piece

    def __aiter__(self) -> ReaderQueue:
        return self

    async def __anext__(self) -> bytearray:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def _drop(self, nbytes: int) -> None:
        self.lost += nbytes
        self.lost_total += nbytes
        i = 0
        while nbytes > 0 and i < len(self._parts):
            part = self._parts[i]
            if not isinstance(part, bytearray):
                i += 1  # a notice stays
                continue
            if len(part) <= nbytes:
                nbytes -= len(part)
                self.size -= len(part)
                del self._parts[i]
            else:
                del part[:nbytes]  # bytearray drops its head without moving the rest
                self.size -= nbytes
                nbytes = 0


@attrs.define(eq=False, repr=False)
class Attachment(Record):
    """One client attached to the console, and the output waiting for it."""

    id: int
    writer: bool
    output: ReaderQueue = attrs.field(factory=ReaderQueue)


async def _receive(stream: trio.lowlevel.FdStream) -> bytes:
    """The console's next output: up to :data:`READ_CHUNK` bytes, waiting for them.

    ``FdStream.receive_some`` yields once more after a read that followed its wait for
    the tty, so every piece of output cost the pump two steps of the event loop. Here
    the wait is the schedule point; a read that did not wait (output keeps coming)
    still yields, so a flood cannot hold the loop.

    Raises:
        OSError: the read failed (EIO once the other side is gone).
        trio.ClosedResourceError: the console was closed during the wait.
    """
    fd = stream.fileno()
    waited = False
    while True:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            waited = True
            continue
        if not waited:
            await trio.lowlevel.checkpoint()
        return data


@attrs.define(eq=False, repr=False)
class ConsoleLog(Record):
    """An append-only log rotated by size: NAME.console.log, .1, .2, ..."""

    path: str
    max_bytes: int
    keep: int
    _fd: int | None = None
    _size: int = 0

    def write(self, data: bytes) -> None:
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = open_creating(self.path, flags, 0o640)
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


@attrs.define(eq=False, repr=False)
class Console(Record):
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
    #: Where a flood is gathered (made on the first one: most consoles never flood).
    _gather_buf: bytearray | None = None
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
                data = await _receive(stream)
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
        # A tty read yields one line-discipline buffer (about 4 KiB) at a time: read
        # straight into one reused buffer, not into a fresh 64 KiB object per read
        # joined afterwards (two thirds of the daemon's time in a console flood).
        if self._gather_buf is None:
            self._gather_buf = bytearray(GATHER)
        buf = self._gather_buf
        view = memoryview(buf)
        size = len(data)
        view[:size] = data
        try:
            while size < GATHER:
                try:
                    n = os.readv(self._fd, [view[size:]])
                except OSError:
                    break  # nothing waiting (EAGAIN), or an error the next receive reports
                if n == 0:
                    break
                size += n
            return bytes(view[:size])
        finally:
            view.release()

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
                att.output.put(data)
            except trio.ClosedResourceError:
                self._attachments.pop(att.id, None)

    def tail(self, nbytes: int | None = None) -> bytes:
        """The last *nbytes* (default: all) bytes of console output kept in memory."""
        if nbytes is None or nbytes >= len(self.ring):
            return bytes(self.ring)
        return bytes(self.ring[-nbytes:]) if nbytes > 0 else b""

    def attach(self, *, writer: bool) -> Attachment:
        """Attach a client; a writer takes writing over from any previous one."""
        att = Attachment(self._next_id, writer)
        self._next_id += 1
        if writer:
            for other in self._attachments.values():
                if other.writer:
                    other.writer = False
                    other.output.notice(TAKEOVER_NOTICE)
        self._attachments[att.id] = att
        return att

    def detach(self, att: Attachment) -> None:
        self._attachments.pop(att.id, None)
        att.output.close()

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
