"""Gathering :class:`~supervisor.hostcheck.checks.HostFacts` from a host's tools.

The same argv on a real FreeBSD host and on a simulated one: ``sysctl``, ``kldstat -q
-m`` (then ``-q -n NAME.ko`` for a missing module), ``pciconf -lv``, ``pfctl -sn``/``-sr``
of the main ruleset, and ``/var/run/dmesg.boot``. A tool that is missing or fails leaves
its fact unknown; the checks then say so instead of guessing.
"""

from __future__ import annotations

import trio

from supervisor.errors import HostToolError, SupervisorError
from supervisor.host import Host
from supervisor.hostcheck.checks import Check as Check
from supervisor.hostcheck.checks import HostFacts, evaluate
from supervisor.vmm import hostparse
from supervisor.vmm.hostexec import run_tool

#: The modules the checks ask about (kldstat -q -m), besides the firewall's.
MODULES: tuple[str, ...] = ("vmm", "nmdm", "if_bridge", "if_tuntap")
TIMEOUT = 10.0


async def _module_state(host: Host, name: str) -> hostparse.KldState | None:
    try:
        r = await run_tool(host, hostparse.kldstat_module_argv(name), timeout=TIMEOUT)
        if r.ok:
            return hostparse.KldState.LOADED
        f = await run_tool(host, hostparse.kldstat_file_argv(f"{name}.ko"), timeout=TIMEOUT)
    except HostToolError:
        return None
    return hostparse.kld_state(r.status, f.status)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


async def gather(host: Host, *, firewall: str = "pf", pf_anchor: str = "bhyvesupd") -> HostFacts:
    """Probe *host*; never raises for a failing tool."""
    try:
        r = await run_tool(
            host,
            ["sysctl", "kern.ostype", "kern.osrelease", "net.inet.ip.forwarding"],
            timeout=TIMEOUT,
        )
        base = hostparse.parse_sysctl(r.stdout) if r.stdout else {}
    except SupervisorError:
        base = {}
    ostype = base.get("kern.ostype")
    if ostype != "FreeBSD":
        return HostFacts(ostype=ostype)
    forwarding = base.get("net.inet.ip.forwarding")
    try:
        vr = await run_tool(host, ["sysctl", "hw.vmm"], timeout=TIMEOUT)
        vmm = hostparse.parse_vmm_sysctl(vr.stdout if vr.ok else "")
    except SupervisorError:
        vmm = hostparse.VmmSysctl({})
    modules: dict[str, hostparse.KldState] = {}
    wanted = (*MODULES, "ipfw" if firewall == "ipfw" else "pf")
    for name in wanted:
        state = await _module_state(host, name)
        if state is not None:
            modules[name] = state
    pci: tuple[hostparse.PciDevice, ...] | None
    try:
        pr = await run_tool(host, hostparse.pciconf_argv(), timeout=TIMEOUT)
        pci = tuple(hostparse.parse_pciconf(pr.stdout)) if pr.ok else None
    except SupervisorError:
        pci = None
    pf_rules: tuple[str, ...] | None = None
    if firewall == "pf" and modules.get("pf") is hostparse.KldState.LOADED:
        try:
            nat = await run_tool(host, ["pfctl", "-sn"], timeout=TIMEOUT)
            rules = await run_tool(host, ["pfctl", "-sr"], timeout=TIMEOUT)
            if nat.ok and rules.ok:
                pf_rules = tuple((nat.stdout + rules.stdout).splitlines())
        except SupervisorError:
            pf_rules = None
    return HostFacts(
        ostype=ostype,
        osrelease=base.get("kern.osrelease"),
        modules=modules,
        vmm=vmm,
        dmesg=await trio.to_thread.run_sync(_read, host.path("/var/run/dmesg.boot")),
        pci=pci,
        forwarding=int(forwarding) if forwarding and forwarding.strip().isdigit() else None,
        firewall=firewall,
        pf_anchor=pf_anchor,
        pf_main_rules=pf_rules,
    )


async def validate(
    host: Host, *, firewall: str = "pf", pf_anchor: str = "bhyvesupd"
) -> list[Check]:
    """Probe *host* and run every check."""
    return evaluate(await gather(host, firewall=firewall, pf_anchor=pf_anchor))
