"""The seed's connection and domain calls: CPU models, vCPUs, CPU stats, time, NMI, memory.

Each method answers from what a FreeBSD host really exposes, by the same commands on a
real and a simulated host:

- vCPU sets from ``bhyvectl --get-active-cpus --get-suspended-cpus``; per-vCPU and
  process CPU time from ``ps`` (bhyve's vCPU threads are named ``vcpu N``); VM-exit
  counters from ``bhyvectl --get-stats --cpu=N``;
- the guest RTC from ``bhyvectl --get-rtc-time`` / ``--set-rtc-time``, converted with
  the guest's clock offset (a localtime RTC holds local wall time written as UTC);
- NMIs by ``bhyvectl --inject-nmi --cpu=N``;
- guest memory by ``pread`` on ``/dev/vmm/NAME`` at offset = guest-physical address,
  after a bounds check against ``bhyvectl --get-memmap``;
- host limits from ``sysctl`` (``hw.vmm.maxcpu``, ``hw.model``, ``hw.machine_arch``).

bhyve has no CPU models to choose (the guest sees the host CPU through CPUID with some
features masked), no memory balloon and no vCPU hotplug; the answers say so rather than
invent values. Calls about a running guest fail with ``InvalidStateError`` (field
``name``) when it is not running.
"""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any, Final

import trio

from supervisor._lazy import lazy_module
from supervisor.actors import lifecycle as lc
from supervisor.errors import (
    HostToolError,
    InvalidStateError,
    InvalidValueError,
    OutOfRangeError,
    UnsupportedError,
)
from supervisor.rpc import bulk
from supervisor.rpc.dispatch import CallContext, Registry
from supervisor.vmm import hostparse
from supervisor.vmm.hostexec import run_tool

if TYPE_CHECKING:
    from supervisor.vmm import bhyvectl, guestmem, psinfo
else:
    # Loaded by the first call that needs them, not by every start of the daemon.
    bhyvectl = lazy_module("supervisor.vmm.bhyvectl")
    guestmem = lazy_module("supervisor.vmm.guestmem")
    psinfo = lazy_module("supervisor.vmm.psinfo")

if TYPE_CHECKING:
    from supervisor.daemon import Daemon, Guest
    from supervisor.domain.model import Domain
    from supervisor.host import Host

#: Seconds a host tool may take before the call fails.
TOOL_TIMEOUT: Final = 15.0

#: Architecture names a caller may use (libvirt's and FreeBSD's) → FreeBSD's name.
ARCHES: Final[dict[str, str]] = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "riscv64": "riscv64",
}

#: How a guest's vCPUs appear: bhyve passes the host CPU through.
CPU_MODE: Final = "host-passthrough"

_LIVE: Final = frozenset({lc.State.RUNNING, lc.State.STOPPING})


def running_pid(guest: Guest) -> int:
    """The pid of the guest's bhyve.

    Raises:
        InvalidStateError: the guest is not running (field ``name``).
    """
    pid = guest.actor.machine.pid
    state = guest.actor.state
    if state not in _LIVE or pid is None:
        raise InvalidStateError(
            f"guest {guest.domain.name} is not running (state {state.value})", field="name"
        )
    return pid


def live_domain(guest: Guest) -> Domain:
    """The definition the running bhyve was started from (a redefinition waits for the
    next boot), else the current one."""
    plan = guest.actor.last_plan
    if plan is not None and plan.domain is not None:
        return plan.domain
    return guest.domain


def host_utc_offset(at: float | None = None) -> int:
    """Seconds east of UTC of the host's local time zone (the daemon runs on the host)."""
    return time.localtime(at).tm_gmtoff


def rtc_to_epoch(rtc: int, clock: str) -> int:
    """Seconds since the epoch from the RTC value of a guest whose clock is *clock*."""
    return rtc - host_utc_offset(rtc) if clock == "localtime" else rtc


def epoch_to_rtc(seconds: int, clock: str) -> int:
    """The RTC value that makes a guest whose clock is *clock* read *seconds*."""
    return seconds + host_utc_offset(seconds) if clock == "localtime" else seconds


async def _bhyvectl(host: Host, argv: list[str]) -> str:
    r = await run_tool(host, argv, timeout=TOOL_TIMEOUT)
    bhyvectl.check_result(argv, r.status, r.stdout, r.stderr)
    return r.stdout


async def _sysctl(host: Host, name: str) -> str | None:
    r = await run_tool(host, hostparse.sysctl_argv(name), timeout=TOOL_TIMEOUT)
    if not r.ok:
        return None
    return hostparse.parse_sysctl_values(r.stdout, [name])[name]


async def host_max_vcpus(host: Host) -> tuple[int, str]:
    """The most vCPUs one guest may have and where that came from."""
    for name in ("hw.vmm.maxcpu", "hw.ncpu"):
        value = await _sysctl(host, name)
        if value is not None and value.strip().isdigit():
            return int(value), name
    raise HostToolError("sysctl: neither hw.vmm.maxcpu nor hw.ncpu could be read")


async def _threads(host: Host, guest: Guest, pid: int) -> dict[int, psinfo.ThreadTimes]:
    """The guest's vCPU threads by vCPU number."""
    r = await run_tool(host, psinfo.threads_argv(pid), timeout=TOOL_TIMEOUT)
    threads = psinfo.parse_threads(r.stdout)
    if not threads:
        raise InvalidStateError(
            f"guest {guest.domain.name}: bhyve (pid {pid}) has gone", field="name"
        )
    out: dict[int, psinfo.ThreadTimes] = {}
    for t in threads:
        n = psinfo.vcpu_number(t.name)
        if n is not None:
            out[n] = t
    return out


def _times(t: psinfo.ThreadTimes | psinfo.ProcessUsage | None) -> dict[str, float | None]:
    if t is None:
        return {"cpu_time": None, "user_time": None, "system_time": None}
    return {"cpu_time": t.cpu_time, "user_time": t.user_time, "system_time": t.system_time}


def _check_vcpu(domain: Domain, vcpu: int) -> None:
    if not 0 <= vcpu < domain.vcpus:
        raise OutOfRangeError(
            f"vcpu: the guest has vCPUs 0 to {domain.vcpus - 1}, got {vcpu}", field="vcpu"
        )


def _parse_rtc(stdout: str, what: str) -> int:
    if not stdout.strip():
        # 15.x's amd64 part reports no error at all: an empty answer is the failure.
        raise HostToolError(f"bhyvectl {what}: the RTC could not be read (no output)")
    return bhyvectl.parse_rtc_time(stdout)


def register(reg: Registry, daemon: Daemon) -> None:
    """Add the seed's calls, bound to *daemon*, to *reg*."""
    method = reg.method
    host = daemon.host

    # -- connect.* -------------------------------------------------------------------------

    @method("connect.get_cpu_model_names", access="ro")
    async def get_cpu_model_names(ctx: CallContext, arch: str = "x86_64") -> dict[str, Any]:
        """The CPU models a guest of *arch* can have: bhyve passes the host CPU through
        (CPUID with some features masked) and has no models to choose, so the one answer
        is the host's own CPU (``hw.model``) as a host-passthrough model."""
        wanted = ARCHES.get(arch)
        if wanted is None:
            raise UnsupportedError(
                f"arch: unknown architecture {arch!r} (known: {', '.join(sorted(ARCHES))})",
                field="arch",
            )
        machine = await _sysctl(host, "hw.machine_arch")
        if machine is not None and ARCHES.get(machine.strip(), machine.strip()) != wanted:
            raise UnsupportedError(
                f"arch: bhyve runs guests of the host's architecture only "
                f"({machine.strip()}), got {arch!r}",
                field="arch",
            )
        model = await _sysctl(host, "hw.model")
        if model is None:
            raise HostToolError("sysctl: hw.model could not be read")
        return {"arch": arch, "models": [model.strip()], "mode": CPU_MODE, "selectable": False}

    @method("connect.get_max_vcpus", access="ro")
    async def get_max_vcpus(ctx: CallContext) -> dict[str, Any]:
        """The most vCPUs a guest may have: ``hw.vmm.maxcpu`` (else the host CPU count)."""
        n, source = await host_max_vcpus(host)
        return {"max_vcpus": n, "source": source}

    # -- domain.* --------------------------------------------------------------------------

    @method("domain.get_max_memory", access="ro")
    async def get_max_memory(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """The guest's memory in KiB: the configured size (bhyve has no balloon, so the
        maximum and the current size are the same)."""
        d = daemon.lookup(name, uuid).domain
        return {"max_memory_kib": d.memory_kib, "wired": d.wired}

    @method("domain.get_max_vcpus", access="ro")
    async def domain_max_vcpus(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """The guest's vCPUs and topology, and the host limit (no hotplug in bhyve, so the
        maximum is the configured count, bounded by the host)."""
        d = daemon.lookup(name, uuid).domain
        limit, source = await host_max_vcpus(host)
        topo = d.topology
        sockets, cores, threads = (
            (topo.sockets, topo.cores, topo.threads) if topo is not None else (d.vcpus, 1, 1)
        )
        return {
            "vcpus": d.vcpus,
            "max_vcpus": min(d.vcpus, limit),
            "sockets": sockets,
            "cores": cores,
            "threads": threads,
            "host_max_vcpus": limit,
            "host_limit_source": source,
            "within_host_limit": d.vcpus <= limit,
        }

    @method("domain.get_vcpus", access="ro")
    async def get_vcpus(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> list[dict[str, Any]]:
        """Per vCPU: its number, state (``running`` in the active set, ``suspended``,
        ``offline`` when inactive or an AP the guest has not started), the CPU time of its
        ``vcpu N`` thread and its host-CPU affinity (the ``-p`` pinning, or null for any
        host CPU)."""
        g = daemon.lookup(name, uuid)
        pid = running_pid(g)
        d = live_domain(g)
        sets = bhyvectl.parse_cpu_sets(
            await _bhyvectl(host, bhyvectl.vcpu_sets_argv(g.domain.name))
        )
        # 15.x lists the APs the guest has not started yet (INIT/SIPI) as "debug cpus";
        # 14.x has no such option (a usage error): there every active vCPU counts as running.
        r = await run_tool(host, bhyvectl.cpus_argv(g.domain.name, "debug"), timeout=TOOL_TIMEOUT)
        waiting = bhyvectl.parse_cpu_set(r.stdout) if r.ok and r.stdout.strip() else frozenset()
        threads = await _threads(host, g, pid)
        pins = {p.vcpu: list(p.cpuset) for p in d.vcpu_pins}
        out = []
        for n in range(d.vcpus):
            state = "offline"
            if n in sets.get("suspended", frozenset()):
                state = "suspended"
            elif n in waiting:
                state = "offline"  # an AP the guest has not started
            elif n in sets.get("active", frozenset()):
                state = "running"
            t = threads.get(n)
            out.append(
                {
                    "vcpu": n,
                    "state": state,
                    **_times(t),
                    "thread_id": t.tid if t is not None else None,
                    "affinity": pins.get(n),
                }
            )
        return out

    @method("domain.get_cpu_stats", access="ro")
    async def get_cpu_stats(
        ctx: CallContext,
        name: str | None = None,
        uuid: str | None = None,
        vcpu: int | None = None,
    ) -> dict[str, Any]:
        """CPU time of the whole bhyve process (user, system) and, per vCPU (or only
        *vcpu*), its thread's CPU time and its VM-exit counters from
        ``bhyvectl --get-stats --cpu=N`` under stable names."""
        g = daemon.lookup(name, uuid)
        pid = running_pid(g)
        d = live_domain(g)
        if vcpu is not None:
            _check_vcpu(d, vcpu)
        r = await run_tool(host, psinfo.process_argv(pid), timeout=TOOL_TIMEOUT)
        usage = psinfo.parse_process(r.stdout)
        if usage is None:
            raise InvalidStateError(f"guest {d.name}: bhyve (pid {pid}) has gone", field="name")
        threads = await _threads(host, g, pid)
        vcpus = []
        for n in [vcpu] if vcpu is not None else range(d.vcpus):
            _, stats = bhyvectl.parse_stats(
                await _bhyvectl(host, bhyvectl.get_stats_argv(g.domain.name, n))
            )
            vcpus.append({"vcpu": n, **_times(threads.get(n)), **bhyvectl.cpu_stats_view(stats)})
        return {"pid": pid, "total": _times(usage), "vcpus": vcpus}

    @method("domain.get_time", access="ro")
    async def get_time(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """The guest's time from its RTC (``bhyvectl --get-rtc-time``): seconds since the
        epoch, honouring the clock offset (a localtime RTC keeps local wall time)."""
        g = daemon.lookup(name, uuid)
        running_pid(g)
        d = live_domain(g)
        rtc = _parse_rtc(await _bhyvectl(host, bhyvectl.rtc_argv(d.name)), "--get-rtc-time")
        return {"seconds": rtc_to_epoch(rtc, d.clock), "nseconds": 0, "rtc": rtc, "clock": d.clock}

    @method("domain.set_time", access="rw")
    async def set_time(
        ctx: CallContext,
        seconds: int,
        name: str | None = None,
        uuid: str | None = None,
        nseconds: int = 0,
    ) -> dict[str, Any]:
        """Set the guest's RTC so that it reads *seconds* since the epoch (whole seconds:
        the RTC has no finer resolution), honouring the clock offset."""
        if seconds < 0:
            raise InvalidValueError(f"seconds: must be >= 0, got {seconds}", field="seconds")
        if not 0 <= nseconds < 1_000_000_000:
            raise InvalidValueError(
                f"nseconds: must be from 0 to 999999999, got {nseconds}", field="nseconds"
            )
        g = daemon.lookup(name, uuid)
        running_pid(g)
        d = live_domain(g)
        want = epoch_to_rtc(seconds, d.clock)
        rtc = _parse_rtc(
            await _bhyvectl(host, bhyvectl.set_rtc_argv(d.name, want)), "--set-rtc-time"
        )
        if abs(rtc - want) > 2:
            raise HostToolError(
                f"bhyvectl --set-rtc-time: the RTC reads {rtc} after setting {want}"
            )
        return {"seconds": rtc_to_epoch(rtc, d.clock), "nseconds": 0, "rtc": rtc, "clock": d.clock}

    @method("domain.inject_nmi", access="rw")
    async def inject_nmi(
        ctx: CallContext, name: str | None = None, uuid: str | None = None, vcpu: int = 0
    ) -> dict[str, Any]:
        """Send a non-maskable interrupt to *vcpu* (``bhyvectl --inject-nmi --cpu=N``)."""
        g = daemon.lookup(name, uuid)
        running_pid(g)
        d = live_domain(g)
        _check_vcpu(d, vcpu)
        await _bhyvectl(host, bhyvectl.inject_nmi_argv(d.name, vcpu))
        return {"vcpu": vcpu}

    #: Guest name -> (bhyve pid, end of its RAM, its RAM mappings), from its memory map.
    ram_maps: dict[str, tuple[int, int, tuple[tuple[int, int], ...]]] = {}

    # Guest memory may hold secrets: like libvirt, never to a read-only connection.
    @method("domain.memory_peek", access="rw", upgrade=True)
    async def memory_peek(
        ctx: CallContext,
        start: int,
        size: int,
        name: str | None = None,
        uuid: str | None = None,
        stream: bool = False,
        to_fd: bool = False,
    ) -> dict[str, Any]:
        """*size* bytes (at most 1 MiB) of guest-physical memory from address *start*,
        base64 in ``data``. Holes below the end of RAM read as zeros; beyond it is an
        error naming ``start`` or ``size``. With ``stream`` true, *size* has no cap:
        the reply has no ``data``, and the connection then carries exactly ``size``
        raw bytes and is closed (closed early if the VM goes away mid-way). With
        ``to_fd`` true (no cap either), the client sends one byte carrying a
        descriptor it opened for writing (``SCM_RIGHTS``) after the reply; the daemon
        writes the bytes into it (nothing passes through the socket) and answers one
        line, ``{"written": N}`` (with ``error`` when it fell short)."""
        g = daemon.lookup(name, uuid)
        pid = running_pid(g)
        stream = stream or to_fd
        limit = None if stream else guestmem.MAX_PEEK
        if size < 0 or start < 0 or (limit is not None and size > limit):
            guestmem.check_range([], start, size, limit)  # raises, naming the field
        known = ram_maps.get(g.domain.name)
        if known is None or known[0] != pid or start + size > known[1]:
            # Every page below the end of RAM reads, and RAM's mappings are fixed for
            # the VM's life: only a range reaching past its end needs the current map
            # (ROMs, framebuffers and BARs may move); the map costs a bhyvectl run.
            memmap = bhyvectl.parse_memmap(
                await _bhyvectl(host, bhyvectl.memmap_argv(g.domain.name))
            )
            known = (pid, guestmem.ram_end(memmap), guestmem.sysmem_spans(memmap))
            ram_maps[g.domain.name] = known
            guestmem.check_range(memmap, start, size, limit)
        if stream:
            fd = await trio.to_thread.run_sync(guestmem.open_device, host.vmm_device(g.domain.name))
            return bulk.reply_with_range(
                ctx,
                fd,
                start,
                size,
                key="start",
                to_fd=to_fd,
                read=guestmem.preadinto_memory,
                mappable=known[2],
                what=g.domain.name,
            )
        data = await trio.to_thread.run_sync(
            guestmem.read_memory, host.vmm_device(g.domain.name), start, size
        )
        return {"start": start, "size": size, "data": base64.b64encode(data).decode()}

    @method("domain.memory_stats", access="ro")
    async def memory_stats(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, int]:
        """What is measurable, in KiB: ``actual`` (the configured size: no balloon),
        ``rss`` (the bhyve process), ``vm_resident`` (guest pages the kernel holds) and,
        for a wired guest (``-S``), ``wired``."""
        g = daemon.lookup(name, uuid)
        pid = running_pid(g)
        d = live_domain(g)
        r = await run_tool(host, psinfo.process_argv(pid), timeout=TOOL_TIMEOUT)
        usage = psinfo.parse_process(r.stdout)
        if usage is None:
            raise InvalidStateError(f"guest {d.name}: bhyve (pid {pid}) has gone", field="name")
        _, stats = bhyvectl.parse_stats(await _bhyvectl(host, bhyvectl.get_stats_argv(d.name, 0)))
        view = bhyvectl.cpu_stats_view(stats)
        out = {"actual": d.memory_kib, "rss": usage.rss_kib}
        if "resident_bytes" in view:
            out["vm_resident"] = view["resident_bytes"] // 1024
        if d.wired and "wired_bytes" in view:
            out["wired"] = view["wired_bytes"] // 1024
        return out
