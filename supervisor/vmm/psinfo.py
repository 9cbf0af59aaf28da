"""ps(1) on FreeBSD: the command lines that read a bhyve's CPU times and memory, and parsers.

Nothing here runs a process. bhyve runs each vCPU in a thread named ``vcpu N``
(``pthread_set_name_np()``), so a vCPU's CPU time is that thread's. FreeBSD's ``ps``
shows one line per thread with ``-H``; the keywords used are

- ``lwp``: the thread id;
- ``time``: accumulated CPU time (``ki_runtime``), ``usertime`` / ``systime``: its user
  and system parts (the thread's rusage);
- ``rss``: resident set size in KiB (process lines only);
- ``tdname``: the thread name, last because it contains a blank (``vcpu 0``).

Each keyword is written ``-o kw=``, one ``-o`` each, so that no header line is printed
(within one ``-o`` list an item with ``=`` takes the rest of the list as its header). Times come as
``MM:SS.hh`` with as many minute digits as needed (``0:00.03``, ``1234:56.78``); the
decimal point follows the locale, so a comma is accepted too. Older releases and other
tools print ``H:MM:SS.hh`` or ``D-HH:MM:SS.hh`` for long times; those parse as well.
A pid that does not exist makes ps print nothing and exit 1.

The simulated host answers the very same command (its ``ps`` reads Linux ``/proc`` and
prints FreeBSD's columns), so the supervisor needs no platform switch here: it runs
FreeBSD's command on both, and the simulator is where Linux is observed.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from supervisor._record import Record
from supervisor.errors import HostToolError, InvalidValueError

__all__ = [
    "ProcessUsage",
    "ThreadTimes",
    "parse_cputime",
    "parse_process",
    "parse_threads",
    "process_argv",
    "threads_argv",
    "vcpu_number",
]

TOOL: Final = "ps"

_THREAD_KEYWORDS: Final = ("lwp", "time", "usertime", "systime", "tdname")
_PROCESS_KEYWORDS: Final = ("rss", "time", "usertime", "systime")


def _columns(keywords: tuple[str, ...]) -> list[str]:
    # One -o per keyword: in an -o list an item with '=' is always the last one (its
    # header may hold commas), so "-o lwp=,time=" would be one column headed ",time=".
    out: list[str] = []
    for kw in keywords:
        out += ["-o", f"{kw}="]
    return out


def _pid(pid: int) -> str:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise InvalidValueError(f"pid: must be a positive integer, got {pid!r}", field="pid")
    return str(pid)


def threads_argv(pid: int) -> list[str]:
    """``ps -H -o lwp= -o time= -o usertime= -o systime= -o tdname= -p PID``: one line per
    thread."""
    return [TOOL, "-H", *_columns(_THREAD_KEYWORDS), "-p", _pid(pid)]


def process_argv(pid: int) -> list[str]:
    """``ps -o rss= -o time= -o usertime= -o systime= -p PID``: the whole process."""
    return [TOOL, *_columns(_PROCESS_KEYWORDS), "-p", _pid(pid)]


_TIME_RE: Final = re.compile(
    r"(?:(?P<days>\d+)-)?(?:(?P<hours>\d+):(?=\d+:))?(?P<minutes>\d+):(?P<seconds>\d{2})"
    r"(?:[.,](?P<frac>\d+))?"
)


def parse_cputime(text: str) -> float:
    """Seconds from a ps CPU time (``0:00.03``, ``61:02.50``, ``1:01:02.50``, ``2-01:00:00.00``).

    Raises:
        ValueError: not such a time.
    """
    m = _TIME_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a ps CPU time: {text!r}")
    seconds = int(m.group("seconds"))
    if m.group("hours") is not None and (int(m.group("minutes")) >= 60 or seconds >= 60):
        raise ValueError(f"not a ps CPU time: {text!r}")
    total = (
        int(m.group("days") or 0) * 86400
        + int(m.group("hours") or 0) * 3600
        + int(m.group("minutes")) * 60
        + seconds
    )
    frac = m.group("frac")
    return round(total + (int(frac) / 10 ** len(frac) if frac else 0.0), 6)


@attrs.frozen(repr=False)
class ThreadTimes(Record):
    """One thread of a process, from :func:`threads_argv`.

    Args:
        tid: the thread id (``lwp``).
        name: the thread name (``vcpu 0``, ``mevent``, ``blk-4:0-0``...).
        cpu_time: seconds of CPU time, user and system together.
        user_time, system_time: its parts, in seconds.
    """

    tid: int
    name: str
    cpu_time: float
    user_time: float
    system_time: float


def _unexpected(what: str, text: str) -> HostToolError:
    shown = text if len(text) <= 200 else text[:200] + "..."
    return HostToolError(f"ps {what}: unexpected output {shown!r}")


_THREAD_RE: Final = re.compile(r"\s*(\d+)\s+(\S+)\s+(\S+)\s+(\S+)(?:\s(.*))?")


def parse_threads(text: str) -> list[ThreadTimes]:
    """The threads printed by :func:`threads_argv`, in the order printed.

    Raises:
        HostToolError: a line is not that shape.
    """
    out: list[ThreadTimes] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        m = _THREAD_RE.fullmatch(line.rstrip())
        if m is None:
            raise _unexpected("-H", line)
        try:
            times = [parse_cputime(m.group(i)) for i in (2, 3, 4)]
        except ValueError:
            raise _unexpected("-H", line) from None
        name = (m.group(5) or "").strip()
        out.append(ThreadTimes(int(m.group(1)), name, *times))
    return out


_VCPU_RE: Final = re.compile(r"vcpu (\d+)")


def vcpu_number(thread_name: str) -> int | None:
    """The vCPU a bhyve thread runs (``vcpu 3`` → 3), or None for other threads."""
    m = _VCPU_RE.fullmatch(thread_name)
    return int(m.group(1)) if m else None


@attrs.frozen(repr=False)
class ProcessUsage(Record):
    """A whole process, from :func:`process_argv`.

    Args:
        rss_kib: resident set size in KiB.
        cpu_time, user_time, system_time: seconds of CPU time, all threads together.
    """

    rss_kib: int
    cpu_time: float
    user_time: float
    system_time: float


def parse_process(text: str) -> ProcessUsage | None:
    """The line printed by :func:`process_argv`, or None when ps printed nothing (no such
    process).

    Raises:
        HostToolError: the text is not that shape.
    """
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return None
    fields = lines[0].split()
    if len(lines) != 1 or len(fields) != 4 or not fields[0].isdigit():
        raise _unexpected("-o rss,time", text)
    try:
        cpu, user, system = (parse_cputime(f) for f in fields[1:])
    except ValueError:
        raise _unexpected("-o rss,time", text) from None
    return ProcessUsage(int(fields[0]), cpu, user, system)
