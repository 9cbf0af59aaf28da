"""The server side of the NBD protocol, as much as QEMU's NBD client needs (pure).

Theory of operation
-------------------

The QEMU guest engine hands each guest disk to QEMU over NBD instead of as a file,
so that the disk's reads and writes are done by the simulated bhyve's own block
worker threads (``blk-S:F-n``), as bhyve's blockif does them: the host's per-thread
I/O accounting then counts them where the supervisor's ``domain.block_stats`` looks.

One connection per disk, over a socket pair whose other end QEMU inherits
(``-blockdev driver=nbd,server.type=fd``). The exchange is the fixed-newstyle
handshake, then transmission with simple replies only:

1. the server sends :func:`greeting`; the client answers with its 32-bit flags;
2. the client sends options (:func:`parse_option_header`); ``NBD_OPT_GO`` and
   ``NBD_OPT_INFO`` are answered with the export's size and flags
   (:func:`export_info_replies`), ``NBD_OPT_EXPORT_NAME`` with
   :func:`export_name_reply`, ``NBD_OPT_ABORT`` ends the session, and everything else
   (structured replies, meta contexts...) is refused as unsupported, which makes
   the client fall back to simple replies;
3. after ``GO`` or ``EXPORT_NAME``, requests (:func:`parse_request`) are read, write,
   flush and disconnect; each gets one :func:`simple_reply`, read data after it.

Only flush and FUA are advertised, so the client sends no trim, zero-write or
block-status requests; any it sends anyway get ``EINVAL``.
"""

from __future__ import annotations

import struct

import attrs

from supervisor._record import Record

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
CLIENT_FLAG_NO_ZEROES = 2

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_INFO = 6
OPT_GO = 7

REP_ACK = 1
REP_INFO = 3
REP_ERR_UNSUP = 0x80000001
INFO_EXPORT = 0

TFLAG_HAS_FLAGS = 1
TFLAG_READ_ONLY = 2
TFLAG_SEND_FLUSH = 4
TFLAG_SEND_FUA = 8

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_FLAG_FUA = 1

#: Error numbers on the wire (the protocol's own values, Linux's numbering).
EPERM = 1
EIO = 5
EINVAL = 22
ENOSPC = 28

OPTION_HEADER = struct.Struct(">QII")
REQUEST = struct.Struct(">IHHQQI")
#: The most a request may move; QEMU's client stays at 32 MiB.
MAX_REQUEST = 32 << 20


class NbdProtocolError(Exception):
    """The client sent something that is not NBD."""


def greeting() -> bytes:
    """What the server sends first."""
    return NBDMAGIC + struct.pack(">QH", IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)


def transmission_flags(readonly: bool) -> int:
    flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA
    return flags | TFLAG_READ_ONLY if readonly else flags


def parse_option_header(data: bytes) -> tuple[int, int]:
    """An option's 16-byte header: (option, length of its data)."""
    magic, option, length = OPTION_HEADER.unpack(data)
    if magic != IHAVEOPT:
        raise NbdProtocolError(f"option magic {magic:#x}")
    if length > 1 << 16:
        raise NbdProtocolError(f"option {option} of {length} bytes")
    return option, length


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return struct.pack(">QIII", OPTION_REPLY_MAGIC, option, reply, len(data)) + data


def export_info_replies(option: int, size: int, readonly: bool) -> bytes:
    """The answer to ``NBD_OPT_GO``/``NBD_OPT_INFO``: the export's size and flags."""
    info = struct.pack(">HQH", INFO_EXPORT, size, transmission_flags(readonly))
    return option_reply(option, REP_INFO, info) + option_reply(option, REP_ACK)


def export_name_reply(size: int, readonly: bool, client_flags: int) -> bytes:
    """The answer to the old ``NBD_OPT_EXPORT_NAME`` (no reply header)."""
    out = struct.pack(">QH", size, transmission_flags(readonly))
    return out if client_flags & CLIENT_FLAG_NO_ZEROES else out + bytes(124)


@attrs.frozen(repr=False)
class Request(Record):
    """One transmission-phase request."""

    flags: int
    command: int
    handle: int
    offset: int
    length: int


def parse_request(data: bytes) -> Request:
    """A request's 28-byte header (a write's data follows it)."""
    magic, flags, command, handle, offset, length = REQUEST.unpack(data)
    if magic != REQUEST_MAGIC:
        raise NbdProtocolError(f"request magic {magic:#x}")
    if command in (CMD_READ, CMD_WRITE) and length > MAX_REQUEST:
        raise NbdProtocolError(f"request of {length} bytes")
    return Request(flags, command, handle, offset, length)


def check_request(req: Request, size: int, readonly: bool) -> int:
    """The error a request gets before it is done (0: none)."""
    if req.command not in (CMD_READ, CMD_WRITE, CMD_FLUSH):
        return EINVAL
    if req.command == CMD_WRITE and readonly:
        return EPERM
    if req.command != CMD_FLUSH and req.offset + req.length > size:
        return ENOSPC if req.command == CMD_WRITE else EINVAL
    return 0


def simple_reply(handle: int, error: int = 0) -> bytes:
    """A simple reply's header (a successful read's data follows it)."""
    return struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, handle)
