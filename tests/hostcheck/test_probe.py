"""Host validation against simulated hosts, healthy and broken: the same tools and
argv as on FreeBSD."""

from __future__ import annotations

import os
from pathlib import Path

from supervisor.hostcheck import checks as hc
from supervisor.hostcheck.probe import validate
from supervisor.vmm.hostexec import run_tool
from supervisor.vmm.sim import install, teardown
from supervisor.vmm.sim.hardware import AMD

KLDS_PF = ("vmm.ko", "nmdm.ko", "if_bridge.ko", "bridgestp.ko", "pf.ko")


def verdicts(checks: list[hc.Check]) -> dict[str, str]:
    return {c.key: c.verdict.value for c in checks}


async def test_a_healthy_simulated_host_passes(tmp_path: Path) -> None:
    root = str(tmp_path / "h")
    host = install(root, klds=KLDS_PF, sysctl={"net.inet.ip.forwarding": 1})
    try:
        Path(host.path("/etc/pf.conf")).write_text(
            'nat-anchor "bhyvesupd/*"\nrdr-anchor "bhyvesupd/*"\nanchor "bhyvesupd/*"\npass all\n'
        )
        r = await run_tool(host, ["pfctl", "-f", "/etc/pf.conf"])
        assert r.ok, r.stderr
        checks = await validate(host)
        assert set(verdicts(checks).values()) == {"PASS"}, hc.render(checks)
        assert hc.exit_status(checks) == 0
    finally:
        teardown(root)


async def test_a_cpu_without_virtualization_fails(tmp_path: Path) -> None:
    host = install(str(tmp_path / "h"), virtualization=False)
    checks = await validate(host)
    v = verdicts(checks)
    assert v["cpu-virt"] == "FAIL"
    assert v["vmm"] == "FAIL"
    assert "lacks virtualization support" in hc.render(checks)
    assert hc.exit_status(checks) == 1


async def test_vmm_not_loaded_and_no_nmdm(tmp_path: Path) -> None:
    host = install(str(tmp_path / "h"), vmm_loaded=False, klds=("if_bridge.ko", "bridgestp.ko"))
    checks = await validate(host)
    v = verdicts(checks)
    assert v["vmm"] == "FAIL"
    assert v["nmdm"] == "FAIL"
    # VT-x shows in the boot messages even before vmm probes the CPU.
    assert v["cpu-virt"] == "PASS"


async def test_default_sim_warns_about_pf_only(tmp_path: Path) -> None:
    host = install(str(tmp_path / "h"))
    checks = await validate(host)
    warned = {k for k, x in verdicts(checks).items() if x != "PASS"}
    assert warned == {"pf", "forwarding"}
    assert hc.exit_status(checks) == 2


async def test_ipfw_firewall_and_amd_host(tmp_path: Path) -> None:
    host = install(
        str(tmp_path / "h"),
        cpu_vendor=AMD,
        klds=("vmm.ko", "nmdm.ko", "if_bridge.ko", "bridgestp.ko", "ipfw.ko"),
        sysctl={"hw.vmm.amdvi.enable": 1, "net.inet.ip.forwarding": 1},
    )
    checks = await validate(host, firewall="ipfw")
    v = verdicts(checks)
    assert v["ipfw"] == "PASS"
    assert "pf" not in v
    assert {c.key: c.detail for c in checks}["ept"] == "RVI (NP)"
    assert hc.exit_status(checks) == 0


async def test_a_host_that_is_not_freebsd(tmp_path: Path) -> None:
    host = install(str(tmp_path / "h"), sysctl={"kern.ostype": "Linux"})
    assert os.path.exists(host.tool("sysctl"))
    checks = await validate(host)
    assert [c.key for c in checks] == ["host"]
    assert hc.exit_status(checks) == 1
