"""Running host tools (bhyvectl, zfs, ifconfig...) from trio.

Commands are written with FreeBSD names (``["bhyvectl", "--vm=web1", "--destroy"]`` or an
absolute FreeBSD path such as ``/usr/sbin/bhyveload``); :func:`resolve_argv` asks the
:class:`~supervisor.host.Host` where that program is on this machine. Short commands
capture their output; nothing here is for long-lived children (a pipe to a process that
must outlive the daemon would kill it with SIGPIPE when the daemon goes).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

import attrs
import trio

from supervisor._record import Record
from supervisor.errors import HostToolError
from supervisor.host import TOOL_PATHS, Host

#: A host tool that does not answer within this many seconds is treated as failed.
DEFAULT_TIMEOUT = 60.0


@attrs.frozen(repr=False)
class ToolResult(Record):
    argv: tuple[str, ...]
    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0


def resolve_argv(host: Host, argv: Sequence[str]) -> list[str]:
    """*argv* with its program mapped to this machine (tool name or FreeBSD path)."""
    if not argv:
        raise ValueError("empty command")
    program = argv[0]
    if program in TOOL_PATHS:
        program = host.tool(program)
    elif program.startswith("/"):
        program = host.path(program)
    return [program, *argv[1:]]


def tool_env(host: Host) -> dict[str, str]:
    env = dict(os.environ)
    env.update(host.env)
    return env


async def run_tool(
    host: Host,
    argv: Sequence[str],
    *,
    check: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    stdin: bytes | None = None,
) -> ToolResult:
    """Run a short host command and capture what it prints.

    Args:
        check: raise :class:`HostToolError` when the command exits non-zero.
        timeout: seconds before the command is killed and counted as failed.

    Raises:
        HostToolError: the program is missing, timed out, or (with *check*) failed.
    """
    real = resolve_argv(host, argv)
    try:
        with trio.fail_after(timeout):
            proc = await trio.run_process(
                real,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=tool_env(host),
            )
    except FileNotFoundError:
        raise HostToolError(f"{argv[0]}: not found at {real[0]}", argv=list(argv)) from None
    except trio.TooSlowError:
        raise HostToolError(f"{argv[0]}: no answer within {timeout:g} s", argv=list(argv)) from None
    result = ToolResult(
        argv=tuple(argv),
        status=proc.returncode,
        stdout=proc.stdout.decode("utf-8", "replace"),
        stderr=proc.stderr.decode("utf-8", "replace"),
    )
    if check and not result.ok:
        raise HostToolError(
            f"{' '.join(argv)} failed with status {result.status}: "
            f"{(result.stderr or result.stdout).strip()[:500]}",
            argv=list(argv),
            status=result.status,
            stderr=result.stderr.strip(),
        )
    return result
