"""Who is on the other end of a Unix socket: the kernel's word, not the client's.

Two kernels, two interfaces, one result (:class:`PeerCredentials`):

- FreeBSD: ``getsockopt(fd, SOL_LOCAL (0), LOCAL_PEERCRED (1))`` fills a ``struct xucred``
  (sys/ucred.h): ``u_int cr_version; uid_t cr_uid; short cr_ngroups;
  gid_t cr_groups[XU_NGROUPS = 16]; union { void *_cr_unused1; pid_t cr_pid; }``.
  ``cr_groups[0]`` is the effective gid; ``cr_pid`` (FreeBSD 13+) is the pid of the process
  that called ``connect(2)``. The credentials are those of connect time, as
  ``getpeereid(3)`` (a wrapper around the same option) reports them.
- Linux: ``SO_PEERCRED`` gives ``struct ucred {pid_t pid; uid_t uid; gid_t gid;}``, and
  ``SO_PEERGROUPS`` (Linux 4.13+) the supplementary groups.

The byte layouts are decoded by pure functions so both are tested on any host; only
:func:`peer_credentials` touches a socket, and only it looks at the platform.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from typing import Final

import attrs

from supervisor._record import Record

__all__ = ["PeerCredentials", "decode_ucred", "decode_xucred", "peer_credentials"]


@attrs.frozen(repr=False)
class PeerCredentials(Record):
    """The credentials of a connected peer.

    Args:
        uid: effective user id.
        gid: effective group id.
        groups: every group the peer is in, the effective one included.
        pid: the peer's process id, when the kernel reports it.
    """

    uid: int
    gid: int
    groups: tuple[int, ...]
    pid: int | None = None

    def in_group(self, gid: int) -> bool:
        """Whether the peer is in group *gid* (effective or supplementary)."""
        return gid == self.gid or gid in self.groups


# --------------------------------------------------------------------------- FreeBSD

SOL_LOCAL: Final = 0
LOCAL_PEERCRED: Final = 1
XUCRED_VERSION: Final = 0
XU_NGROUPS: Final = 16

# Native alignment: the union starts on a pointer boundary (offset 80 on LP64, 76 on
# ILP32), whatever the architecture.
_XUCRED_HEAD: Final = struct.Struct(f"@IIh{XU_NGROUPS}I")
_XUCRED: Final = struct.Struct(f"@IIh{XU_NGROUPS}IP")
_XUCRED_PID_OFFSET: Final = _XUCRED.size - struct.calcsize("@P")


def decode_xucred(raw: bytes) -> PeerCredentials:
    """Decode a FreeBSD ``struct xucred`` as ``LOCAL_PEERCRED`` returns it.

    Raises:
        ValueError: the buffer is too short, or of an unknown version.
    """
    if len(raw) < _XUCRED_HEAD.size:
        raise ValueError(f"xucred: need at least {_XUCRED_HEAD.size} bytes, got {len(raw)}")
    version, uid, ngroups, *groups = _XUCRED_HEAD.unpack_from(raw)
    if version != XUCRED_VERSION:
        raise ValueError(f"xucred: unknown cr_version {version}")
    if not 1 <= ngroups <= XU_NGROUPS:
        raise ValueError(f"xucred: cr_ngroups must be 1..{XU_NGROUPS}, got {ngroups}")
    pid: int | None = None
    if len(raw) >= _XUCRED.size:
        (pid,) = struct.unpack_from("@i", raw, _XUCRED_PID_OFFSET)
    gids = tuple(dict.fromkeys(groups[:ngroups]))
    return PeerCredentials(uid=uid, gid=groups[0], groups=gids, pid=pid or None)


# --------------------------------------------------------------------------- Linux

_UCRED: Final = struct.Struct("@iII")
# SO_PEERGROUPS is 59 on the asm-generic ABI (x86, arm, arm64, riscv...); Python exposes
# the constant only from 3.13 on some builds.
_SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)
_MAX_GROUPS: Final = 65536


def decode_ucred(raw: bytes, groups_raw: bytes = b"") -> PeerCredentials:
    """Decode a Linux ``struct ucred`` and, optionally, an ``SO_PEERGROUPS`` gid array.

    Raises:
        ValueError: the buffer is too short.
    """
    if len(raw) < _UCRED.size:
        raise ValueError(f"ucred: need {_UCRED.size} bytes, got {len(raw)}")
    pid, uid, gid = _UCRED.unpack_from(raw)
    n = len(groups_raw) // 4
    extra = struct.unpack(f"@{n}I", groups_raw[: n * 4])
    groups = tuple(dict.fromkeys((gid, *extra)))
    return PeerCredentials(uid=uid, gid=gid, groups=groups, pid=pid or None)


def _linux_groups(sock: socket.socket) -> bytes:
    size = 64 * 4
    while size <= _MAX_GROUPS * 4:
        try:
            return sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno != errno.ERANGE:
                return b""
            size *= 4
    return b""


# --------------------------------------------------------------------------- platform

# Read once, as a plain str: the type checker would otherwise narrow sys.platform to the
# machine it runs on and call the other branch dead.
_PLATFORM: Final[str] = sys.platform


def peer_credentials(fd: int) -> PeerCredentials:
    """The credentials of the peer of the connected Unix socket *fd*.

    The descriptor is not closed or changed.

    Raises:
        OSError: the kernel would not say (not a Unix socket, or an unsupported system).
    """
    # A duplicate, so that closing our socket object leaves the caller's descriptor open.
    dup = os.dup(fd)
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        raise
    with sock:
        if _PLATFORM.startswith("linux"):
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            return decode_ucred(raw, _linux_groups(sock))
        if _PLATFORM.startswith("freebsd"):
            level = getattr(socket, "SOL_LOCAL", SOL_LOCAL)
            option = getattr(socket, "LOCAL_PEERCRED", LOCAL_PEERCRED)
            return decode_xucred(sock.getsockopt(level, option, _XUCRED.size))
    raise OSError(errno.ENOTSUP, f"peer credentials are not supported on {_PLATFORM}")
