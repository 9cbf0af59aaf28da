"""bhyvectl(8): the command lines we run and the text it prints, as pure functions.

Nothing here runs a process. The builders return argv lists whose program is the tool
name ``"bhyvectl"`` (the caller maps it with :meth:`supervisor.host.Host.tool`); the
parsers take captured text. Output shapes are those of FreeBSD 14/15's bhyvectl.c:

- ``--get-active-cpus`` (and suspended, debug): ``active cpus:\\t 0, 1`` or ``\\t (none)``;
- ``--get-stats``: ``vcpu0 stats:`` then ``%-40s\\t%ld`` per statistic, descriptions from
  the kernel (so their set varies by kernel and CPU vendor; arrays print ``desc[i]``, an
  index the kernel cannot describe prints ``(null)``);
- ``--get-rtc-time``: ``rtc time %#lx: <gmtime of it>``;
- ``--get-memmap`` / ``--get-memseg``: columns of uppercase hex and sizes from
  ``humanize_number()`` (``2048MB``, ``16384kB``, ``65536B``: lowercase k, no space),
  with a NUL byte before the first memmap flag;
- ``--get-cpu-topology``: ``cpu_topology:\\tsockets=1, cores=1, threads=1, maxcpus=16``.

Failures come in three shapes, mapped to typed errors by :func:`error_from_result`: a VM
that cannot be opened (``vm_open: NAME could not be opened: <strerror>`` on stderr, exit
1), an ioctl error (``errno = N`` on *stdout*, exit 255), and usage errors (exit 1, the
option list on stderr). On 15.x the amd64-only options (``--inject-nmi``, the RTC and
register getters) report no error at all: nothing printed, exit 0.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Final, Literal

import attrs

from supervisor._record import Record
from supervisor.errors import (
    HostToolError,
    InvalidStateError,
    InvalidValueError,
    OutOfRangeError,
    SupervisorError,
)

__all__ = [
    "TOOL",
    "CpuSetKind",
    "MemMapEntry",
    "MemSeg",
    "Topology",
    "VmIoctlError",
    "VmNotFoundError",
    "check_result",
    "cpu_stats_view",
    "cpus_argv",
    "create_argv",
    "destroy_argv",
    "error_from_result",
    "force_poweroff_argv",
    "force_reset_argv",
    "get_stats_argv",
    "inject_nmi_argv",
    "memmap_argv",
    "memseg_argv",
    "parse_cpu_set",
    "parse_cpu_sets",
    "parse_humanized",
    "parse_memmap",
    "parse_memseg",
    "parse_rtc_time",
    "parse_stats",
    "parse_topology",
    "rtc_argv",
    "set_rtc_argv",
    "topology_argv",
    "vcpu_sets_argv",
]

#: argv[0] of every command built here.
TOOL: Final = "bhyvectl"

#: VM_MAX_NAMELEN on FreeBSD 14 and 15.
MAX_VM_NAME: Final = 229

CpuSetKind = Literal["active", "suspended", "debug"]


class VmNotFoundError(InvalidStateError):
    """The kernel has no VM of that name (``/dev/vmm/NAME`` does not exist).

    On 15.x the same message appears when vmm.ko is not loaded (``/dev/vmmctl`` is
    missing); check the module before concluding the guest is down.
    """


class VmIoctlError(HostToolError):
    """bhyvectl reached the VM but the kernel refused the operation (``errno = N``).

    Attributes:
        errno: FreeBSD's errno number (``37``, EALREADY, for a second force-poweroff).
        errno_name: its symbolic name when known (``"EALREADY"``), else ``"errno N"``.
    """

    def __init__(
        self,
        operation: str,
        *,
        errno: int,
        argv: list[str] | None = None,
        status: int | None = None,
        stderr: str = "",
    ) -> None:
        self.errno = errno
        self.errno_name = FREEBSD_ERRNO.get(errno, f"errno {errno}")
        super().__init__(
            f"bhyvectl {operation} failed: {self.errno_name} (errno {errno})",
            argv=argv,
            status=status,
            stderr=stderr,
        )


#: FreeBSD's errno numbers (sys/sys/errno.h); from 35 on they differ from Linux's.
FREEBSD_ERRNO: Final[Mapping[int, str]] = {
    1: "EPERM",
    2: "ENOENT",
    3: "ESRCH",
    4: "EINTR",
    5: "EIO",
    6: "ENXIO",
    7: "E2BIG",
    9: "EBADF",
    11: "EDEADLK",
    12: "ENOMEM",
    13: "EACCES",
    14: "EFAULT",
    16: "EBUSY",
    17: "EEXIST",
    19: "ENODEV",
    22: "EINVAL",
    24: "EMFILE",
    25: "ENOTTY",
    28: "ENOSPC",
    33: "EDOM",
    34: "ERANGE",
    35: "EAGAIN",
    36: "EINPROGRESS",
    37: "EALREADY",
    45: "EOPNOTSUPP",
    60: "ETIMEDOUT",
    63: "ENAMETOOLONG",
    78: "ENOSYS",
}


# --------------------------------------------------------------------------- argv


def _vm(name: str) -> str:
    if not name:
        raise InvalidValueError("name: must not be empty", field="name")
    if len(name) > MAX_VM_NAME:
        raise InvalidValueError(
            f"name: at most {MAX_VM_NAME} characters, got {len(name)}", field="name"
        )
    if "/" in name or "\0" in name or name in (".", ".."):
        raise InvalidValueError(f"name: not a valid device name, got {name!r}", field="name")
    return f"--vm={name}"


def _cpu(cpu: int) -> str:
    if isinstance(cpu, bool) or not isinstance(cpu, int) or cpu < 0:
        raise InvalidValueError(f"cpu: must be an integer >= 0, got {cpu!r}", field="cpu")
    return f"--cpu={cpu}"


def create_argv(name: str) -> list[str]:
    """``bhyvectl --vm=NAME --create``."""
    return [TOOL, _vm(name), "--create"]


def destroy_argv(name: str) -> list[str]:
    """``bhyvectl --vm=NAME --destroy`` (silent, exit 0, even if the destroy failed)."""
    return [TOOL, _vm(name), "--destroy"]


def force_reset_argv(name: str) -> list[str]:
    """``bhyvectl --vm=NAME --force-reset``: the running bhyve then exits 0."""
    return [TOOL, _vm(name), "--force-reset"]


def force_poweroff_argv(name: str) -> list[str]:
    """``bhyvectl --vm=NAME --force-poweroff``: the running bhyve then exits 1."""
    return [TOOL, _vm(name), "--force-poweroff"]


def inject_nmi_argv(name: str, cpu: int = 0) -> list[str]:
    """``bhyvectl --vm=NAME --inject-nmi --cpu=N``."""
    return [TOOL, _vm(name), "--inject-nmi", _cpu(cpu)]


def get_stats_argv(name: str, cpu: int = 0) -> list[str]:
    """``bhyvectl --vm=NAME --get-stats --cpu=N`` (statistics of one vCPU)."""
    return [TOOL, _vm(name), "--get-stats", _cpu(cpu)]


def cpus_argv(name: str, which: CpuSetKind = "active") -> list[str]:
    """``bhyvectl --vm=NAME --get-{active,suspended,debug}-cpus``."""
    if which not in ("active", "suspended", "debug"):
        raise InvalidValueError(
            f"which: must be active, suspended or debug, got {which!r}", field="which"
        )
    return [TOOL, _vm(name), f"--get-{which}-cpus"]


def rtc_argv(name: str) -> list[str]:
    """``bhyvectl --vm=NAME --get-rtc-time``."""
    return [TOOL, _vm(name), "--get-rtc-time"]


def set_rtc_argv(name: str, seconds: int) -> list[str]:
    """``bhyvectl --vm=NAME --set-rtc-time=SECS --get-rtc-time``.

    The getter runs after the setter in the same invocation, so the output shows the
    value the RTC took; on 15.x a failed set prints nothing at all (the amd64 part
    swallows its errors), which is how the caller notices.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 <= seconds < 1 << 63:
        raise InvalidValueError(
            f"seconds: must be an integer from 0 to 2**63-1, got {seconds!r}", field="seconds"
        )
    return [TOOL, _vm(name), f"--set-rtc-time={seconds}", "--get-rtc-time"]


def vcpu_sets_argv(name: str) -> list[str]:
    """``bhyvectl --vm=NAME --get-active-cpus --get-suspended-cpus`` (one line each)."""
    return [TOOL, _vm(name), "--get-active-cpus", "--get-suspended-cpus"]


def memmap_argv(name: str) -> list[str]:
    """``bhyvectl --vm=NAME --get-memmap``."""
    return [TOOL, _vm(name), "--get-memmap"]


def memseg_argv(name: str) -> list[str]:
    """``bhyvectl --vm=NAME --get-memseg``."""
    return [TOOL, _vm(name), "--get-memseg"]


def topology_argv(name: str) -> list[str]:
    """``bhyvectl --vm=NAME --get-cpu-topology``."""
    return [TOOL, _vm(name), "--get-cpu-topology"]


# --------------------------------------------------------------------------- parsing


def _unexpected(what: str, text: str) -> HostToolError:
    shown = text if len(text) <= 200 else text[:200] + "..."
    return HostToolError(f"bhyvectl {what}: unexpected output {shown!r}")


_CPUS_RE: Final = re.compile(r"(active|suspended|debug) cpus:\t ?(.*)")


def parse_cpu_set(text: str) -> frozenset[int]:
    """The vCPUs listed by ``--get-active-cpus`` (or suspended, debug).

    Raises:
        HostToolError: the text is not that shape.
    """
    line = text.strip("\n")
    m = _CPUS_RE.fullmatch(line)
    if m is None:
        raise _unexpected("cpu set", text)
    body = m.group(2).strip()
    if body == "(none)":
        return frozenset()
    try:
        return frozenset(int(part) for part in body.split(","))
    except ValueError:
        raise _unexpected("cpu set", text) from None


def parse_cpu_sets(text: str) -> dict[CpuSetKind, frozenset[int]]:
    """Every set printed by one bhyvectl run (``--get-active-cpus --get-suspended-cpus``),
    keyed ``active``, ``suspended``, ``debug``; sets not printed are absent.

    Raises:
        HostToolError: a line is not a cpu-set line.
    """
    out: dict[CpuSetKind, frozenset[int]] = {}
    for line in text.split("\n"):
        if not line:
            continue
        m = _CPUS_RE.fullmatch(line)
        if m is None:
            raise _unexpected("cpu set", line)
        kind: CpuSetKind = "active"
        if m.group(1) == "suspended":
            kind = "suspended"
        elif m.group(1) == "debug":
            kind = "debug"
        out[kind] = parse_cpu_set(line)
    return out


_STATS_HEAD_RE: Final = re.compile(r"vcpu(\d+) stats:")


def parse_stats(text: str) -> tuple[int, dict[str, int]]:
    """The vCPU number and statistics of ``--get-stats``.

    Each line splits on its last TAB into a description (trailing blanks removed) and a
    value. Descriptions are kept as the kernel wrote them; an entry whose description
    repeats (several ``(null)``) gets `` #2``, `` #3``... so nothing is lost.

    Raises:
        OutOfRangeError: nothing was printed (bhyvectl's answer for a vCPU that does
            not exist).
        HostToolError: the text is not that shape.
    """
    lines = [line for line in text.split("\n") if line]
    if not lines:
        raise OutOfRangeError("cpu: bhyvectl printed no statistics (no such vCPU)", field="cpu")
    head = _STATS_HEAD_RE.fullmatch(lines[0])
    if head is None:
        raise _unexpected("--get-stats", lines[0])
    stats: dict[str, int] = {}
    for line in lines[1:]:
        desc, tab, value = line.rpartition("\t")
        if not tab:
            raise _unexpected("--get-stats", line)
        desc = desc.rstrip()
        try:
            number = int(value)
        except ValueError:
            raise _unexpected("--get-stats", line) from None
        key, n = desc, 1
        while key in stats:
            n += 1
            key = f"{desc} #{n}"
        stats[key] = number
    return int(head.group(1)), stats


#: Kernel statistic descriptions (VMM_STAT in sys/amd64/vmm) and their field names.
STAT_NAMES: Final[Mapping[str, str]] = {
    "vcpu migration across host cpus": "vcpu_migrations",
    "total number of vm exits": "vm_exits_total",
    "vm exits due to external interrupt": "external_interrupt_exits",
    "external-interrupt vm exits with invalid interruption information": (
        "external_interrupt_invalid_exits"
    ),
    "number of times hlt was intercepted": "hlt_exits",
    "number of times %cr access was intercepted": "cr_access_exits",
    "number of times rdmsr was intercepted": "rdmsr_exits",
    "number of times wrmsr was intercepted": "wrmsr_exits",
    "number of monitor trap exits": "monitor_trap_exits",
    "number of times pause was intercepted": "pause_exits",
    "vm exits due to interrupt window opening": "interrupt_window_exits",
    "vm exits due to nmi window opening": "nmi_window_exits",
    "number of times in/out was intercepted": "io_exits",
    "number of times cpuid was intercepted": "cpuid_exits",
    "vm exits due to nested page fault": "nested_page_faults",
    "vm exits for instruction emulation": "instruction_emulation_exits",
    "number of vm exits for unknown reason": "unknown_exits",
    "number of times astpending at exit": "astpending_exits",
    "number of times idle requested at exit": "idle_requested_exits",
    "number of vm exits handled in userspace": "userspace_exits",
    "number of times rendezvous pending at exit": "rendezvous_exits",
    "number of vm exits due to exceptions": "exception_exits",
    "number of NMIs delivered to vcpu": "nmis_delivered",
    "number of ExtINTs delivered to vcpu": "extints_delivered",
    "vcpu total runtime": "runtime_tsc",
    "Resident memory": "resident_bytes",
    "Wired memory": "wired_bytes",
    "ipis sent to vcpu": "ipis_sent",
}

_ARRAY_RE: Final = re.compile(r"(.*)\[(\d+)\]")


def cpu_stats_view(stats: Mapping[str, int]) -> dict[str, int]:
    """*stats* (from :func:`parse_stats`) keyed by stable snake_case names.

    Known descriptions get their field name (``total number of vm exits`` →
    ``vm_exits_total``; ``ipis sent to vcpu[3]`` → ``ipis_sent[3]``); others keep their
    text, so a newer kernel's statistics still show.
    """
    out: dict[str, int] = {}
    for desc, value in stats.items():
        name = STAT_NAMES.get(desc)
        if name is None and (m := _ARRAY_RE.fullmatch(desc)) and m.group(1) in STAT_NAMES:
            name = f"{STAT_NAMES[m.group(1)]}[{m.group(2)}]"
        out[name or desc] = value
    return out


_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)
_RTC_RE: Final = re.compile(
    r"rtc time (0x[0-9a-f]+|0): ([A-Z][a-z]{2}) ([A-Z][a-z]{2}) (\d{2}) "
    r"(\d{2}):(\d{2}):(\d{2}) (-?\d+)"
)


def parse_rtc_time(text: str) -> int:
    """The RTC's seconds from ``--get-rtc-time``.

    With bhyve's default (RTC in local time) this is the guest's local wall time written
    as if it were UTC. The printed date is checked against the number.

    Raises:
        HostToolError: the text is not that shape, or the date and number disagree.
    """
    line = text.strip("\n")
    m = _RTC_RE.fullmatch(line)
    if m is None:
        raise _unexpected("--get-rtc-time", text)
    seconds = int(m.group(1), 16)
    t = time.gmtime(seconds)
    expected = (
        _DAYS[t.tm_wday],
        _MONTHS[t.tm_mon - 1],
        f"{t.tm_mday:02d}",
        f"{t.tm_hour:02d}",
        f"{t.tm_min:02d}",
        f"{t.tm_sec:02d}",
        str(t.tm_year),
    )
    if m.groups()[1:] != expected:
        raise _unexpected("--get-rtc-time (date does not match the seconds)", text)
    return seconds


_SIZE_RE: Final = re.compile(r"(\d+)([kMGTPE]?)B")
_PREFIXES: Final = "kMGTPE"


def parse_humanized(text: str) -> int:
    """Bytes from a ``humanize_number(..., "B", HN_AUTOSCALE, HN_NOSPACE)`` size.

    ``2048MB`` → 2147483648, ``16384kB`` → 16777216, ``65536B`` → 65536. The tool divides
    by 1024 while the number has more than five digits and rounds, so the result is
    exact only for sizes that are whole multiples of the printed unit (guest memory and
    ROM sizes are).

    Raises:
        ValueError: not such a size.
    """
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"size: not a humanized byte count, got {text!r}")
    scale = _PREFIXES.index(m.group(2)) + 1 if m.group(2) else 0
    return int(m.group(1)) << (10 * scale)


@attrs.frozen(repr=False)
class MemMapEntry(Record):
    """One guest-physical mapping from ``--get-memmap``.

    Args:
        gpa: guest-physical address.
        length: bytes mapped (see :func:`parse_humanized` on precision).
        segment: the memory segment (``sysmem``, ``bootrom``, ``framebuffer``...).
        offset: offset into the segment.
        prot: ``RWX``-style protection, ``-`` for a missing right.
        flags: ``wired`` and/or ``iommu``.
    """

    gpa: int
    length: int
    segment: str
    offset: int
    prot: str
    flags: tuple[str, ...] = ()

    @property
    def end(self) -> int:
        """The first address after the mapping."""
        return self.gpa + self.length

    @property
    def writable(self) -> bool:
        return "W" in self.prot


_MEMMAP_HEAD: Final = "Address"
_MEMMAP_RE: Final = re.compile(
    r"(?P<gpa>[0-9A-F]+)\s+(?P<length>\d+[kMGTPE]?B)\s+(?P<segment>\S*)\s+"
    r"(?P<offset>[0-9A-F]+)\s+(?P<prot>[R-][W-][X-])\s*(?P<flags>\S*)\s*"
)


def parse_memmap(text: str) -> list[MemMapEntry]:
    """The mappings of ``--get-memmap``, in the order printed.

    Raises:
        HostToolError: the text is not that shape.
    """
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines or not lines[0].startswith(_MEMMAP_HEAD):
        raise _unexpected("--get-memmap", text)
    out: list[MemMapEntry] = []
    for line in lines[1:]:
        # bhyvectl prints the first flag as "%cwired" with '\0': drop the NUL.
        m = _MEMMAP_RE.fullmatch(line.replace("\0", ""))
        if m is None:
            raise _unexpected("--get-memmap", line)
        flags = tuple(f for f in m.group("flags").split("/") if f)
        out.append(
            MemMapEntry(
                gpa=int(m.group("gpa"), 16),
                length=parse_humanized(m.group("length")),
                segment=m.group("segment") or "sysmem",
                offset=int(m.group("offset"), 16),
                prot=m.group("prot"),
                flags=flags,
            )
        )
    return out


@attrs.frozen(repr=False)
class MemSeg(Record):
    """One memory segment from ``--get-memseg``.

    Args:
        id: segment id (14.x: 0 sysmem, 1 bootrom...; 15.x: 0-7 sysmem, 8 bootrom...).
        length: bytes (see :func:`parse_humanized` on precision).
        name: ``sysmem`` for guest RAM, else the device-memory name.
    """

    id: int
    length: int
    name: str


_MEMSEG_RE: Final = re.compile(r"(\d+)\s+(\d+[kMGTPE]?B)\s*(.*)")


def parse_memseg(text: str) -> list[MemSeg]:
    """The segments of ``--get-memseg``.

    Raises:
        HostToolError: the text is not that shape.
    """
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines or not lines[0].startswith("ID"):
        raise _unexpected("--get-memseg", text)
    out: list[MemSeg] = []
    for line in lines[1:]:
        m = _MEMSEG_RE.fullmatch(line.rstrip())
        if m is None:
            raise _unexpected("--get-memseg", line)
        out.append(MemSeg(int(m.group(1)), parse_humanized(m.group(2)), m.group(3) or "sysmem"))
    return out


@attrs.frozen(repr=False)
class Topology(Record):
    """The vCPU topology of ``--get-cpu-topology``."""

    sockets: int
    cores: int
    threads: int
    maxcpus: int


_TOPOLOGY_RE: Final = re.compile(
    r"cpu_topology:\s*sockets=(\d+), cores=(\d+), threads=(\d+), maxcpus=(\d+)"
)


def parse_topology(text: str) -> Topology:
    """The topology of ``--get-cpu-topology``.

    Raises:
        HostToolError: the text is not that shape.
    """
    m = _TOPOLOGY_RE.fullmatch(text.strip())
    if m is None:
        raise _unexpected("--get-cpu-topology", text)
    sockets, cores, threads, maxcpus = (int(g) for g in m.groups())
    return Topology(sockets, cores, threads, maxcpus)


# --------------------------------------------------------------------------- failures

_VM_OPEN_RE: Final = re.compile(r"vm_open: (?P<name>.*) could not be opened: (?P<reason>.*)")
_ERRNO_RE: Final = re.compile(r"errno = (-?\d+)")
_NO_SUCH_FILE: Final = "No such file or directory"


def _option(argv: Sequence[str]) -> str:
    ops = [a for a in argv[1:] if a.startswith("--") and not a.startswith(("--vm=", "--cpu="))]
    return " ".join(ops) or "bhyvectl"


def error_from_result(
    argv: Sequence[str], status: int, stdout: str, stderr: str
) -> SupervisorError | None:
    """The typed error a finished bhyvectl run stands for, or None if it succeeded.

    - ``vm_open: NAME could not be opened: No such file or directory`` →
      :class:`VmNotFoundError`; other ``vm_open`` reasons → :class:`HostToolError`;
    - ``errno = N`` on stdout (exit 255) → :class:`VmIoctlError` with the errno;
    - any other non-zero exit (usage, unknown CPU vendor...) → :class:`HostToolError`.

    Args:
        argv: the command that ran (for the message and the error's data).
        status: its exit status (negative for a signal).
        stdout, stderr: what it printed.
    """
    args = list(argv)
    err = stderr.strip()
    what = _option(args)
    if status == 0:
        return None
    for line in err.splitlines():
        if m := _VM_OPEN_RE.fullmatch(line.strip()):
            name, reason = m.group("name"), m.group("reason")
            if reason == _NO_SUCH_FILE:
                return VmNotFoundError(f"no VM named {name!r} in the kernel ({what})", field="name")
            return HostToolError(
                f"bhyvectl {what}: cannot open VM {name!r}: {reason}",
                argv=args,
                status=status,
                stderr=err,
            )
    for line in stdout.splitlines():
        if m := _ERRNO_RE.fullmatch(line.strip()):
            return VmIoctlError(what, errno=int(m.group(1)), argv=args, status=status, stderr=err)
    how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    first = err.splitlines()[0] if err else "no message"
    return HostToolError(
        f"bhyvectl {what} failed ({how}): {first}", argv=args, status=status, stderr=err
    )


def check_result(argv: Sequence[str], status: int, stdout: str, stderr: str) -> None:
    """Raise :func:`error_from_result`'s error, if there is one."""
    exc = error_from_result(argv, status, stdout, stderr)
    if exc is not None:
        raise exc
