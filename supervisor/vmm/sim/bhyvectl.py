"""The simulated ``bhyvectl(8)``.

Options are parsed as ``getopt_long`` does (``--opt=value`` or ``--opt value``,
unambiguous prefixes), then run in the fixed order of bhyvectl's ``main()``: open or
create the VM, ``--set-mem``, memory segments and map, the amd64 machdep part
(RTC, NMI), vCPU sets, stats, topology, ``--force-reset``, ``--force-poweroff``, and
last ``--destroy``. Output shapes and statuses are FreeBSD's: an ioctl error prints
``errno = N`` on *standard output* and exits 255; a VM that cannot be opened prints
``vm_open: NAME could not be opened: <strerror>`` on standard error and exits 1; the
15.x machdep part swallows its errors.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import attrs

from supervisor._record import Record
from supervisor.vmm.sim import bsd, hardware
from supervisor.vmm.sim.kernel import Kernel, VmState

#: Long options: name → whether it takes an argument.
OPTIONS: dict[str, bool] = {
    "vm": True,
    "cpu": True,
    "create": False,
    "destroy": False,
    "set-mem": True,
    "get-stats": False,
    "get-memmap": False,
    "get-memseg": False,
    "force-reset": False,
    "force-poweroff": False,
    "get-active-cpus": False,
    "get-suspended-cpus": False,
    "get-debug-cpus": False,
    "get-cpu-topology": False,
    "inject-nmi": False,
    "get-rtc-time": False,
    "set-rtc-time": True,
}

#: The per-vCPU statistics the simulated kernel keeps, in VM_STAT_DESC order.
STATS: tuple[str, ...] = (
    "number of times in/out was intercepted",
    "vcpu migration across host cpus",
    "vm exits due to external interrupt",
    "number of times hlt was intercepted",
    "number of times %cr access was intercepted",
    "number of times rdmsr was intercepted",
    "number of times wrmsr was intercepted",
    "number of monitor trap exits",
    "number of times pause was intercepted",
    "vm exits due to interrupt window opening",
    "vm exits due to nmi window opening",
    "number of times cpuid was intercepted",
    "vm exits due to nested page fault",
    "vm exits for instruction emulation",
    "number of vm exits for unknown reason",
    "number of times astpending at exit",
    "number of times idle requested at exit",
    "number of vm exits handled in userspace",
    "number of times rendezvous pending at exit",
    "number of vm exits due to exceptions",
    "total number of vm exits",
    "number of NMIs delivered to vcpu",
    "vcpu total runtime",
    "Resident memory",
    "Wired memory",
)

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class UsageError(Exception):
    """The command line is not acceptable; the message (if any) precedes the usage."""


@attrs.frozen(repr=False)
class Request(Record):
    """What one bhyvectl invocation asks for."""

    vm: str | None = None
    cpu: int = 0
    flags: frozenset[str] = frozenset()
    set_mem: int | None = None
    set_rtc_time: int | None = None

    def __contains__(self, flag: str) -> bool:
        return flag in self.flags


def _strtol(text: str) -> int:
    """C ``strtoul(text, NULL, 0)``: leading digits in base 0, 0 when there are none."""
    s = text.strip()
    neg = s.startswith("-")
    s = s.lstrip("+-")
    base, digits = 10, "0123456789"
    if s[:2].lower() == "0x":
        base, digits, s = 16, "0123456789abcdefABCDEF", s[2:]
    elif s.startswith("0") and len(s) > 1:
        base, digits = 8, "01234567"
    n = 0
    for ch in s:
        if ch not in digits:
            break
        n = n * base + int(ch, 16)
    return -n if neg else n


def parse_args(args: Sequence[str], *, major: int) -> Request:
    """Parse bhyvectl's arguments (without argv[0]) the way getopt_long does.

    Raises:
        UsageError: an unknown or malformed option, a stray operand, or no ``--vm``.
    """
    options = dict(OPTIONS)
    if major < 15:
        del options["get-debug-cpus"]
    values: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("--"):
            raise UsageError("")
        name, has_value, value = arg[2:].partition("=")
        matches = [o for o in options if o == name] or [o for o in options if o.startswith(name)]
        if len(matches) != 1 or not name:
            kind = "ambiguous" if len(matches) > 1 else "unrecognized"
            raise UsageError(f"bhyvectl: {kind} option `{arg}'")
        opt = matches[0]
        if options[opt]:
            if not has_value:
                if i >= len(args):
                    raise UsageError(f"bhyvectl: option `--{opt}' requires an argument")
                value = args[i]
                i += 1
            values[opt] = value
        else:
            if has_value:
                raise UsageError(f"bhyvectl: option `--{opt}' doesn't allow an argument")
            flags.add(opt)
    if i < len(args) or "vm" not in values:
        raise UsageError("")
    return Request(
        vm=values["vm"],
        cpu=_strtol(values.get("cpu", "0")),
        flags=frozenset(flags),
        set_mem=_strtol(values["set-mem"]) if "set-mem" in values else None,
        set_rtc_time=_strtol(values["set-rtc-time"]) if "set-rtc-time" in values else None,
    )


def usage_text(major: int) -> str:
    """What bhyvectl prints on standard error before exiting 1 on a usage error."""
    lines = ["Usage: bhyvectl --vm=<vmname>"]
    for opt, takes in OPTIONS.items():
        if opt == "vm" or (opt == "get-debug-cpus" and major < 15):
            continue
        lines.append(f"       [--{opt}{'=<value>' if takes else ''}]")
    return "\n".join(lines) + "\n"


def humanize(size: int) -> str:
    """``humanize_number(buf, 8, size, "B", HN_AUTOSCALE, HN_NOSPACE)``.

    Divides by 1024 while the value has more digits than fit, then prints the prefix
    (lowercase ``k``): 2 GiB → ``2048MB``, 16 MiB → ``16384kB``, 64 KiB → ``65536B``.
    """
    prefixes = ("", "k", "M", "G", "T", "P", "E")
    # An 8-byte buffer less the NUL, the "B" and one digit's slack leaves 5 digits.
    limit, divisor, cut = 100000, 1024, 973
    quotient, remainder, i = size, 0, 0
    while (quotient >= limit or (quotient == limit - 1 and remainder >= cut)) and i < 6:
        remainder = quotient % divisor
        quotient //= divisor
        i += 1
    size = quotient + (remainder + divisor // 2) // divisor
    return f"{size}{prefixes[i]}B"


def format_cpus(banner: str, cpus: Sequence[int]) -> str:
    """``print_cpus()``: ``banner:\\t 0, 1`` or ``banner:\\t (none)``."""
    if not cpus:
        return f"{banner}:\t (none)\n"
    return f"{banner}:\t " + ", ".join(str(c) for c in sorted(cpus)) + "\n"


def format_memseg(vm: VmState) -> str:
    """``--get-memseg``: ``%-4d%-12s%s`` rows under ``ID  Length      Name``."""
    out = ["ID  Length      Name\n"]
    for seg in sorted(vm.memsegs, key=lambda s: s.segid):
        if seg.length == 0:
            continue
        out.append(f"{seg.segid:<4d}{humanize(seg.length):<12s}{seg.name or 'sysmem'}\n")
    return "".join(out)


def format_memmap(vm: VmState) -> str:
    """``--get-memmap``; the first flag is printed as ``"%cwired", '\\0'``."""
    names = {s.segid: s.name or "sysmem" for s in vm.memsegs}
    out = ["Address     Length      Segment     Offset      Prot  Flags\n"]
    for m in sorted(vm.memmaps, key=lambda m: m.gpa):
        line = (
            f"{m.gpa:<12X}{humanize(m.length):<12s}{names.get(m.segid, ''):<12s}"
            f"{m.segoff:<12X}{m.prot}   "
        )
        if m.wired:
            line += "\0wired"
        out.append(line + "\n")
    return "".join(out)


def format_stats(vcpu: int, values: dict[str, int]) -> str:
    """``--get-stats``: ``vcpuN stats:`` then ``%-40s\\t%ld`` per statistic."""
    out = [f"vcpu{vcpu} stats:\n"]
    for desc in STATS:
        out.append(f"{desc:<40s}\t{values.get(desc, 0)}\n")
    return "".join(out)


def format_rtc(seconds: int) -> str:
    """``--get-rtc-time``: ``rtc time %#lx: %s %s %02d %02d:%02d:%02d %d`` in UTC."""
    t = time.gmtime(seconds)
    hexval = f"{seconds:#x}" if seconds else "0"
    return (
        f"rtc time {hexval}: {_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:02d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_year}\n"
    )


def format_topology(vm: VmState) -> str:
    """``--get-cpu-topology``."""
    return (
        f"cpu_topology:\tsockets={vm.sockets}, cores={vm.cores}, "
        f"threads={vm.threads}, maxcpus={vm.maxcpus}\n"
    )


def _live_stats(kernel: Kernel, vm: VmState, vcpu: int) -> dict[str, int]:
    values = dict(vm.stats.get(str(vcpu), {}))
    if vcpu == 0:
        # Resident memory is what the guest touched: the allocated blocks of its RAM.
        try:
            st = os.stat(kernel.device_path(vm.name))
            resident = st.st_blocks * 512
        except FileNotFoundError:
            resident = 0
        values["Resident memory"] = resident
        wired = any(m.wired for m in vm.memmaps)
        values["Wired memory"] = resident if wired else 0
    return values


def run(root: str, args: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Run ``bhyvectl ARGS`` on the simulated host at *root*; returns the exit status."""
    hw = hardware.load(root)
    major = hw.major
    try:
        req = parse_args(args, major=major)
    except UsageError as e:
        if str(e):
            err.write(f"{e}\n")
        err.write(usage_text(major))
        return 1
    assert req.vm is not None
    kernel = Kernel(root, hw)
    name = req.vm
    error: OSError | None = None

    if "create" in req:
        try:
            kernel.create(name)
        except OSError as e:
            if not (major >= 15 and e.errno == errno.EEXIST):
                # 15.x opens an existing VM with VMMAPI_OPEN_CREATE; 14.x's vm_create fails.
                if major >= 15:
                    err.write(
                        f"vm_open: {name} could not be opened: {bsd.strerror(e.errno or 0)}\n"
                    )
                    return 1
                error = e
    vm: VmState | None = None
    if error is None:
        if not hw.vmm_loaded or not kernel.exists(name):
            err.write(f"vm_open: {name} could not be opened: No such file or directory\n")
            return 1
        vm = kernel.get(name)

    if error is None and vm is not None and req.set_mem is not None:
        # --set-mem is in MiB, rounded up to 2 MiB as bhyvectl does.
        mem = ((req.set_mem * 1024 * 1024) + (2 << 20) - 1) & ~((2 << 20) - 1)
        try:
            vm = kernel.setup_memory(name, mem)
        except OSError as e:
            error = e
    if error is None and vm is not None:
        if "get-memseg" in req:
            out.write(format_memseg(vm))
        if "get-memmap" in req:
            out.write(format_memmap(vm))
        error = _machdep(kernel, vm, req, out, major)
    if error is None and vm is not None:
        vm = kernel.get(name)
        if "get-active-cpus" in req:
            out.write(format_cpus("active cpus", vm.active))
        if "get-suspended-cpus" in req:
            out.write(format_cpus("suspended cpus", vm.suspended))
        if "get-debug-cpus" in req:
            out.write(format_cpus("debug cpus", vm.debug))
        # VM_STATS fails for a vCPU beyond maxcpus; the stats block never sets error.
        if "get-stats" in req and 0 <= req.cpu < vm.maxcpus:
            out.write(format_stats(req.cpu, _live_stats(kernel, vm, req.cpu)))
        if "get-cpu-topology" in req:
            out.write(format_topology(vm))
    for flag, how in (("force-reset", "reset"), ("force-poweroff", "poweroff")):
        if error is None and flag in req:
            try:
                kernel.suspend(name, how)
            except OSError as e:
                error = e
    if error is not None:
        out.write(f"errno = {bsd.number(error.errno or 0)}\n")
        return 255
    if "destroy" in req:
        # vm_destroy()'s result is ignored: silent, exit 0.
        try:
            kernel.destroy(name)
        except OSError:
            pass
    return 0


def _machdep(kernel: Kernel, vm: VmState, req: Request, out: TextIO, major: int) -> OSError | None:
    """The amd64 part. On 15.x its errors end it silently; 14.x reports them."""
    try:
        if req.set_rtc_time is not None:
            kernel.set_rtc(vm.name, req.set_rtc_time)
        if "inject-nmi" in req:
            kernel.inject_nmi(vm.name, req.cpu)
        if "get-rtc-time" in req:
            out.write(format_rtc(kernel.rtc_seconds(kernel.get(vm.name))))
    except OSError as e:
        return None if major >= 15 else e
    return None


def main(root: str, argv: Sequence[str]) -> int:
    """Entry point of the installed ``/usr/sbin/bhyvectl`` of the simulated host at *root*."""
    return run(root, argv[1:], sys.stdout, sys.stderr)
