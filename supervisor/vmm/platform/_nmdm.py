"""The nmdm(4) naming rule and the raw tty settings that every console end uses.

No trio here: the simulated host's nmdm relay (a plain process) and the supervisor's
console code both import it, so there is one definition of what an nmdm path is and
of what "raw" means. Everything but :func:`make_raw` is pure.
"""

from __future__ import annotations

import functools
import termios
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from supervisor._record import Record
from supervisor.errors import InvalidValueError

#: devfs node names are at most SPECNAMELEN (255) bytes.
MAX_NAME_BYTES = 255

_PREFIX = "/dev/"


@attrs.frozen(repr=False)
class NmdmPath(Record):
    """One end of an nmdm pair, named as on FreeBSD.

    Args:
        pair: the node name without its end letter (``nmdm0``, ``nmdm-web1.1``).
        end: ``"A"`` or ``"B"``.
    """

    pair: str
    end: Literal["A", "B"]

    @property
    def path(self) -> str:
        """The FreeBSD path of this end."""
        return f"{_PREFIX}{self.pair}{self.end}"

    @property
    def name(self) -> str:
        """The devfs node name of this end (``nmdm0A``)."""
        return f"{self.pair}{self.end}"

    @property
    def peer(self) -> NmdmPath:
        """The other end of the same pair."""
        return NmdmPath(self.pair, "B" if self.end == "A" else "A")


# Pure, and asked again for the same few paths at every start of a guest (its pair is
# ensured, then opened): the answer is remembered.
@functools.lru_cache(maxsize=4096)
def parse_nmdm_path(path: str) -> NmdmPath:
    """Check *path* against nmdm(4)'s cloning rule and split it into pair and end.

    A lookup under ``/dev`` creates a pair when the node name starts with ``nmdm``, has
    at least one more character before its last one, and ends in ``A`` or ``B``
    (``nmdm_clone()``). Subdirectories never match: devfs offers the clone handler one
    path component at a time.

    Raises:
        InvalidValueError: *path* is not such a name.
    """
    if not path.startswith(_PREFIX):
        raise InvalidValueError(f"nmdm path: must lie directly under /dev, got {path!r}")
    name = path[len(_PREFIX) :]
    if "/" in name or "\0" in name:
        raise InvalidValueError(
            f"nmdm path: must be a node directly under /dev, got {path!r}", field="path"
        )
    if not name.startswith("nmdm") or len(name) <= len("nmdm") + 1:
        raise InvalidValueError(
            f"nmdm path: name must be 'nmdm' + at least one character + 'A' or 'B', got {path!r}",
            field="path",
        )
    end: Literal["A", "B"]
    if name.endswith("A"):
        end = "A"
    elif name.endswith("B"):
        end = "B"
    else:
        raise InvalidValueError(
            f"nmdm path: name must end in 'A' or 'B', got {path!r}", field="path"
        )
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise InvalidValueError(
            f"nmdm path: name must be at most {MAX_NAME_BYTES} bytes, got {len(name)}",
            field="path",
        )
    return NmdmPath(name[:-1], end)


def raw_attrs(attrs_in: Sequence[Any], *, clocal: bool = True) -> list[Any]:
    """*attrs_in* (as :func:`termios.tcgetattr` returns them) made raw, like cfmakeraw(3).

    Every byte passes unchanged in both directions: no echo, no line editing, no
    signal characters, no CR/NL translation, 8 data bits, no parity. With *clocal*
    the end ignores the modem lines, so the other end closing never hangs it up
    (what bhyve does to its end, uart_backend.c ``ttyopen()``).
    """
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs_in
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8 | termios.CREAD
    if clocal:
        cflag |= termios.CLOCAL
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


def make_raw(fd: int, *, clocal: bool = True) -> None:
    """Put the tty open at *fd* in raw mode (see :func:`raw_attrs`), effective now."""
    termios.tcsetattr(fd, termios.TCSANOW, raw_attrs(termios.tcgetattr(fd), clocal=clocal))
