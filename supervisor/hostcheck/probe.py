"""Gathering :class:`~supervisor.hostcheck.checks.HostFacts` from a host's tools.

The same argv on a real FreeBSD host and on a simulated one: ``sysctl``, ``kldstat -q
-m`` (then ``-q -n NAME.ko`` for a missing module), ``pciconf -lv``, ``pfctl -sn``/``-sr``
of the main ruleset, and ``/var/run/dmesg.boot``. A tool that is missing or fails leaves
its fact unknown; the checks then say so instead of guessing.
"""

from __future__ import annotations

from typing import Any

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
    results: dict[str, Any] = {}
    wanted = (*MODULES, "ipfw" if firewall == "ipfw" else "pf")

    async def module(name: str) -> None:
        results[f"kld:{name}"] = await _module_state(host, name)

    async def tool(key: str, argv: list[str]) -> None:
        try:
            results[key] = await run_tool(host, argv, timeout=TIMEOUT)
        except SupervisorError:
            results[key] = None

    # The tools are independent: ask them all at once.
    async with trio.open_nursery() as nursery:
        for name in wanted:
            nursery.start_soon(module, name)
        nursery.start_soon(tool, "vmm", ["sysctl", "hw.vmm"])
        nursery.start_soon(tool, "pci", hostparse.pciconf_argv())
        if firewall == "pf":
            nursery.start_soon(tool, "pf-nat", ["pfctl", "-sn"])
            nursery.start_soon(tool, "pf-rules", ["pfctl", "-sr"])
    modules = {n: results[f"kld:{n}"] for n in wanted if results[f"kld:{n}"] is not None}
    vr = results["vmm"]
    vmm = hostparse.parse_vmm_sysctl(vr.stdout if vr is not None and vr.ok else "")
    pr = results["pci"]
    pci: tuple[hostparse.PciDevice, ...] | None = None
    if pr is not None and pr.ok:
        try:
            pci = tuple(hostparse.parse_pciconf(pr.stdout))
        except SupervisorError:
            pci = None
    pf_rules: tuple[str, ...] | None = None
    nat, rules = results.get("pf-nat"), results.get("pf-rules")
    if (
        modules.get("pf") is hostparse.KldState.LOADED
        and nat is not None
        and rules is not None
        and nat.ok
        and rules.ok
    ):
        pf_rules = tuple((nat.stdout + rules.stdout).splitlines())
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
