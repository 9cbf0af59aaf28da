"""How a process ended, and the texts that say so. Pure: no I/O, no trio."""

from __future__ import annotations

import os

import attrs

from supervisor._record import Record
from supervisor.errors import InvalidValueError


def _check_code(
    instance: ExitInfo, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and not 0 <= value <= 255:
        raise InvalidValueError(f"code: must be 0..255, got {value}", field="code")


def _check_signal(
    instance: ExitInfo, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and value <= 0:
        raise InvalidValueError(f"signal: must be > 0, got {value}", field="signal")


@attrs.frozen(repr=False)
class ExitInfo(Record):
    """How a process ended, as far as the supervisor can tell.

    Args:
        code: its exit status, when it exited (bhyve: 0 reset, 1 poweroff, 2 halt,
            3 triple fault, 4 error...).
        signal: the signal that killed it, when one did.
        known: whether *code*/*signal* are the real outcome. An adopted process that
            went without a trace (already reaped, killed with SIGKILL on the simulated
            host) ended for an unknown reason: both are None.
    """

    code: int | None = attrs.field(default=None, validator=_check_code)
    signal: int | None = attrs.field(default=None, validator=_check_signal)
    known: bool = False

    def __attrs_post_init__(self) -> None:
        outcomes = (self.code is not None) + (self.signal is not None)
        if self.known and outcomes != 1:
            raise InvalidValueError(
                f"exit: a known exit has exactly one of code and signal, got "
                f"code={self.code} signal={self.signal}"
            )
        if not self.known and outcomes:
            raise InvalidValueError(
                f"exit: an unknown exit has neither code nor signal, got "
                f"code={self.code} signal={self.signal}"
            )

    @classmethod
    def exited(cls, code: int) -> ExitInfo:
        """The process called exit(*code*)."""
        return cls(code=code, known=True)

    @classmethod
    def killed(cls, signal: int) -> ExitInfo:
        """The process was killed by *signal*."""
        return cls(signal=signal, known=True)


#: The outcome of a process that ended without a trace.
UNKNOWN = ExitInfo()


def decode_wait_status(status: int) -> ExitInfo:
    """The outcome encoded in a wait(2) status (also kqueue's ``NOTE_EXIT`` data).

    Raises:
        InvalidValueError: *status* describes a stopped or continued process, not an
            ended one.
    """
    if os.WIFEXITED(status):
        return ExitInfo.exited(os.WEXITSTATUS(status))
    if os.WIFSIGNALED(status):
        return ExitInfo.killed(os.WTERMSIG(status))
    raise InvalidValueError(f"wait status: {status:#x} is not that of an ended process")


def parse_status_text(text: str) -> ExitInfo:
    """Read a simulated bhyve's status file: ``exit N`` or ``signal N``.

    An empty file (its writer died before writing) is an unknown exit.

    Raises:
        InvalidValueError: *text* is neither form.
    """
    words = text.split()
    if not words:
        return UNKNOWN
    if len(words) == 2 and words[1].isdigit() and words[1].isascii():
        if words[0] == "exit":
            return ExitInfo.exited(int(words[1]))
        if words[0] == "signal":
            return ExitInfo.killed(int(words[1]))
    raise InvalidValueError(f"status file: expected 'exit N' or 'signal N', got {text!r}")


def format_status_text(info: ExitInfo) -> str:
    """The status file text for *info*, as :func:`parse_status_text` reads it."""
    if info.code is not None:
        return f"exit {info.code}\n"
    if info.signal is not None:
        return f"signal {info.signal}\n"
    return ""


def parse_ps_title(output: str) -> str | None:
    """The title in FreeBSD ``ps -ww -o comm= -o args= -p PID`` output, or None.

    ps shows a title set with setproctitle(3) as ``bhyve: web1 (bhyve)``: it appends
    the command name in parentheses when the arguments no longer start with it. The
    suffix is removed, so the result is what the process set (``bhyve: web1``).
    """
    line = output.strip("\n").lstrip()
    if not line:
        return None
    comm, _, args = line.partition(" ")
    args = args.strip()
    suffix = f" ({comm})"
    if args.endswith(suffix):
        args = args[: -len(suffix)]
    return args or None


def parse_ps_identity(line: str) -> tuple[str, str] | None:
    """The command name and the arguments (as :func:`parse_ps_title` reads them) in one
    line of FreeBSD ``ps -ww -o comm= -o args=`` output, or None."""
    args = parse_ps_title(line)
    if args is None:
        return None
    return line.lstrip().partition(" ")[0], args


def is_bhyve_of(comm: str, args: str, name: str) -> bool:
    """Whether a process with command name *comm* and arguments *args* (as
    :func:`parse_ps_title` reads them) is the bhyve of the VM *name*.

    bhyve sets its title (``bhyve: web1``) only at the end of its start-up, after it
    has created the VM and set up its devices; until then it shows the command it was
    started with, whose last argument is the VM's name. Both count: a daemon starting
    in that window must take the bhyve over, not destroy its VM as a leftover. Never
    ``bhyve: web10`` for ``web1``, nor a loader (``bhyveload ... web1``).
    """
    if args == f"bhyve: {name}" or args.startswith(f"bhyve: {name} ("):
        return True
    words = args.split()
    return comm == "bhyve" and len(words) >= 2 and words[-1] == name


def find_ps_bhyve(output: str, name: str) -> list[int]:
    """The pids in FreeBSD ``ps -ax -ww -o pid= -o comm= -o args=`` output that
    :func:`is_bhyve_of` the VM *name*, in the order listed."""
    found = []
    for line in output.splitlines():
        pid_text, _, rest = line.strip().partition(" ")
        identity = parse_ps_identity(rest)
        if pid_text.isdigit() and identity is not None and is_bhyve_of(*identity, name):
            found.append(int(pid_text))
    return found
