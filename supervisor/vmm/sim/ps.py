"""The simulated ``ps(1)``: FreeBSD's columns, read from Linux ``/proc``.

The simulated bhyve is a real process with real threads named as bhyve names them
(``vcpu 0``, ``mevent``...), so this ps reports what really happened, in the shape
FreeBSD's ps prints it. Only what the supervisor asks is understood: ``-H`` (one line
per thread), ``-o LIST`` (several allowed; ``kw=`` drops a column's header, ``kw=T``
renames it; with every header empty no header line is printed) and ``-p PID[,PID]``.

Keywords: ``pid``, ``lwp`` (alias ``tid``), ``time`` (alias ``cputime``), ``usertime``,
``systime``, ``rss`` and ``vsz`` (KiB), ``tdname``, ``comm``. Times print as FreeBSD's
``printtime()`` does: ``M:SS.hh`` with as many minute digits as needed. ``time`` is the
scheduler's exact run time (``schedstat``), ``usertime`` / ``systime`` the tick-sampled
split (``stat``), as FreeBSD's ``ki_runtime`` and rusage differ too. A pid that does
not exist prints nothing (but any header) and exits 1; a bad option prints the usage
and exits 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

import attrs

from supervisor._record import Record

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

USAGE = (
    "usage: ps [--libxo] [-aCcdefHhjlmrSTuvwXxZ] [-O fmt | -o fmt]\n"
    "          [-G gid[,gid...]] [-J jid[,jid...]] [-M core] [-N system]\n"
    "          [-p pid[,pid...]] [-t tty[,tty...]] [-U user[,user...]]\n"
    "       ps [--libxo] -L\n"
)


class UsageError(Exception):
    """ps refuses the command line."""


@attrs.frozen(repr=False)
class _Column(Record):
    header: str
    right: bool
    width: int


#: keyword → (default header, right-justified, minimum width).
KEYWORDS: dict[str, _Column] = {
    "pid": _Column("PID", True, 5),
    "lwp": _Column("LWP", True, 6),
    "tid": _Column("LWP", True, 6),
    "time": _Column("TIME", True, 8),
    "cputime": _Column("TIME", True, 8),
    "usertime": _Column("USERTIME", True, 8),
    "systime": _Column("SYSTIME", True, 8),
    "rss": _Column("RSS", True, 5),
    "vsz": _Column("VSZ", True, 5),
    "tdname": _Column("TDNAME", False, 6),
    "comm": _Column("COMMAND", False, 7),
}


@attrs.frozen(repr=False)
class Request(Record):
    threads: bool
    columns: tuple[tuple[str, str], ...]
    pids: tuple[int, ...]


def parse_args(args: Sequence[str]) -> Request:
    """The options of one ps run (without argv[0]).

    Raises:
        UsageError: an option this ps does not know, or a bad value.
    """
    threads = False
    columns: list[tuple[str, str]] = []
    pids: list[int] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "-H":
            threads = True
        elif arg in ("-o", "-p"):
            if i >= len(args):
                raise UsageError(f"ps: option requires an argument -- {arg[1]}")
            value = args[i]
            i += 1
            if arg == "-o":
                columns.extend(_columns(value))
            else:
                pids.extend(_pids(value))
        elif arg.startswith(("-o", "-p")) and len(arg) > 2:
            if arg[1] == "o":
                columns.extend(_columns(arg[2:]))
            else:
                pids.extend(_pids(arg[2:]))
        else:
            raise UsageError(f"ps: illegal option -- {arg.lstrip('-')[:1] or arg}")
    if not columns:
        columns = [("pid", "PID"), ("time", "TIME"), ("comm", "COMMAND")]
    return Request(threads, tuple(columns), tuple(pids))


def _columns(spec: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    # A header given with '=' takes the rest of the argument, commas included.
    parts: list[str] = []
    for piece in spec.split(","):
        if parts and "=" in parts[-1]:
            parts[-1] += "," + piece
        else:
            parts.append(piece)
    for part in parts:
        name, eq, header = part.partition("=")
        if name not in KEYWORDS:
            raise UsageError(f"ps: {name}: keyword not found")
        out.append((name, header if eq else KEYWORDS[name].header))
    return out


def _pids(spec: str) -> list[int]:
    out: list[int] = []
    for piece in spec.replace(" ", ",").split(","):
        if not piece:
            continue
        if not piece.isdigit():
            raise UsageError(f"ps: Invalid process id: {piece}")
        out.append(int(piece))
    return out


def format_time(seconds: float) -> str:
    """``printtime()``: minutes, seconds, hundredths (``0:00.03``, ``1234:56.78``)."""
    hundredths = int(seconds * 100 + 0.5)
    secs, hs = divmod(hundredths, 100)
    return f"{secs // 60}:{secs % 60:02d}.{hs:02d}"


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _stat_fields(path: str) -> list[str]:
    # The command name is in parentheses and may contain blanks: split after it.
    return _read(path).rpartition(")")[2].split()


@attrs.frozen(repr=False)
class _Entry(Record):
    pid: int
    tid: int
    tdname: str
    comm: str
    runtime: float
    user: float
    system: float
    rss_kib: int
    vsz_kib: int


def _thread_entry(pid: int, tid: int, comm: str, rss: int, vsz: int) -> _Entry:
    base = f"/proc/{pid}/task/{tid}"
    fields = _stat_fields(f"{base}/stat")
    runtime_ns = int(_read(f"{base}/schedstat").split()[0])
    return _Entry(
        pid,
        tid,
        _read(f"{base}/comm").rstrip("\n"),
        comm,
        runtime_ns / 1e9,
        int(fields[11]) / _CLK_TCK,
        int(fields[12]) / _CLK_TCK,
        rss,
        vsz,
    )


def entries(pid: int, *, threads: bool) -> list[_Entry]:
    """What ps knows of *pid*: one entry, or one per thread; empty if it is gone."""
    try:
        fields = _stat_fields(f"/proc/{pid}/stat")
        comm = _read(f"/proc/{pid}/comm").rstrip("\n")
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        rss = int(fields[21]) * _PAGE // 1024
        vsz = int(fields[20]) // 1024
        per_thread = []
        for tid in tids:
            try:
                per_thread.append(_thread_entry(pid, tid, comm, rss, vsz))
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended meanwhile
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return []
    if threads:
        return per_thread
    return [
        _Entry(
            pid,
            pid,
            comm,
            comm,
            sum(t.runtime for t in per_thread),
            int(fields[11]) / _CLK_TCK,
            int(fields[12]) / _CLK_TCK,
            rss,
            vsz,
        )
    ]


_VALUES: dict[str, Callable[[_Entry], str]] = {
    "pid": lambda e: str(e.pid),
    "lwp": lambda e: str(e.tid),
    "tid": lambda e: str(e.tid),
    "time": lambda e: format_time(e.runtime),
    "cputime": lambda e: format_time(e.runtime),
    "usertime": lambda e: format_time(e.user),
    "systime": lambda e: format_time(e.system),
    "rss": lambda e: str(e.rss_kib),
    "vsz": lambda e: str(e.vsz_kib),
    "tdname": lambda e: e.tdname,
    "comm": lambda e: e.comm,
}


def render(req: Request, rows: Sequence[_Entry]) -> str:
    """The table ps prints for *rows*."""
    cells = [[_VALUES[name](e) for name, _ in req.columns] for e in rows]
    widths = []
    for i, (name, header) in enumerate(req.columns):
        widths.append(max([len(header), KEYWORDS[name].width, *(len(r[i]) for r in cells)]))
    lines: list[list[str]] = []
    if any(header for _, header in req.columns):
        lines.append([header for _, header in req.columns])
    lines.extend(cells)
    out = []
    last = len(req.columns) - 1
    for line in lines:
        parts = []
        for i, ((name, _), text) in enumerate(zip(req.columns, line, strict=True)):
            if KEYWORDS[name].right:
                parts.append(text.rjust(widths[i]))
            else:
                parts.append(text if i == last else text.ljust(widths[i]))
        out.append(" ".join(parts) + "\n")
    return "".join(out)


def run(args: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Run ``ps ARGS``; returns the exit status."""
    try:
        req = parse_args(args)
    except UsageError as e:
        err.write(f"{e}\n{USAGE}")
        return 1
    rows: list[_Entry] = []
    for pid in req.pids or (os.getpid(),):
        rows.extend(entries(pid, threads=req.threads))
    out.write(render(req, rows))
    return 0 if rows else 1


def main(root: str, argv: Sequence[str]) -> int:
    """Entry point of the installed ``/bin/ps`` of the simulated host at *root*."""
    return run(argv[1:], sys.stdout, sys.stderr)
