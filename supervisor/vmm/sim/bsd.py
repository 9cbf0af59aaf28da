"""FreeBSD's errno numbers and messages, for tools that print them.

The simulated tools run on Linux, where several errno values and ``strerror()``
texts differ (``EALREADY`` is 114, not 37; ``EBUSY`` reads "Device or resource
busy", not "Device busy"). Whatever a simulated tool prints goes through these two
functions so that the supervisor parses FreeBSD's output, never Linux's.
"""

from __future__ import annotations

import errno
import os

#: Linux errno → FreeBSD errno, where they differ.
_NUMBERS: dict[int, int] = {
    errno.EAGAIN: 35,
    errno.EDEADLK: 11,
    errno.EINPROGRESS: 36,
    errno.EALREADY: 37,
    errno.ENOTSOCK: 38,
    errno.EOPNOTSUPP: 45,
    errno.EADDRINUSE: 48,
    errno.ECONNREFUSED: 61,
    errno.ETIMEDOUT: 60,
    errno.ENAMETOOLONG: 63,
    errno.ENOTEMPTY: 66,
    errno.ENOSYS: 78,
}

#: FreeBSD's strerror() where it differs from glibc's.
_MESSAGES: dict[int, str] = {
    errno.EBUSY: "Device busy",
    errno.ENXIO: "Device not configured",
    errno.EAGAIN: "Resource temporarily unavailable",
    errno.EDEADLK: "Resource deadlock avoided",
    errno.ENOTSUP: "Operation not supported",
    errno.ENODEV: "Operation not supported by device",
    errno.ENOTTY: "Inappropriate ioctl for device",
}


def number(code: int) -> int:
    """The FreeBSD errno for the (Linux) errno *code*."""
    return _NUMBERS.get(code, code)


def strerror(code: int) -> str:
    """FreeBSD's ``strerror()`` text for the (Linux) errno *code*."""
    return _MESSAGES.get(code) or os.strerror(code)
