from __future__ import annotations

from supervisor.host import Host
from supervisor.vmm.sim import install
from supervisor.vmm.sim.hardware import AMD
from tests.vmm.sim.conftest import run


def test_value_only_and_name_value_forms(sim: Host) -> None:
    assert run(sim, "sysctl", "-n", "hw.vmm.maxcpu").stdout == "8\n"
    assert run(sim, "sysctl", "hw.vmm.vmx.initialized").stdout == "hw.vmm.vmx.initialized: 1\n"
    both = run(sim, "sysctl", "-n", "kern.osrelease", "hw.machine")
    assert both.stdout == "15.0-RELEASE\namd64\n"


def test_a_node_expands_to_its_leaves(sim: Host) -> None:
    lines = run(sim, "sysctl", "hw.vmm").stdout.splitlines()
    assert "hw.vmm.vmx.cap.unrestricted_guest: 1" in lines
    assert "hw.vmm.maxcpu: 8" in lines
    assert all(line.startswith("hw.vmm.") for line in lines)


def test_unknown_oid(sim: Host) -> None:
    result = run(sim, "sysctl", "hw.vmm.nope")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "sysctl: unknown oid 'hw.vmm.nope'\n"
    quiet = run(sim, "sysctl", "-q", "hw.vmm.nope")
    assert (quiet.returncode, quiet.stderr) == (1, "")
    ignored = run(sim, "sysctl", "-i", "hw.vmm.nope", "hw.ncpu")
    assert (ignored.returncode, ignored.stdout) == (0, "hw.ncpu: 8\n")


def test_no_hw_vmm_without_vmm_loaded(sim_root: str) -> None:
    host = install(sim_root, vmm_loaded=False)
    assert run(host, "sysctl", "-n", "hw.vmm.vmx.initialized").returncode == 1


def test_values_follow_the_installed_hardware(sim_root: str) -> None:
    host = install(sim_root, cpu_vendor=AMD, ncpu=2, freebsd="14.3")
    assert (
        run(host, "sysctl", "-n", "hw.vmm.maxcpu", "kern.osrelease").stdout == "2\n14.3-RELEASE\n"
    )
    assert run(host, "sysctl", "-n", "hw.vmm.svm.num_asids").returncode == 0


def test_writable_tunable_is_changed_and_kept(sim: Host) -> None:
    result = run(sim, "sysctl", "net.inet.ip.forwarding=1")
    assert result.stdout == "net.inet.ip.forwarding: 0 -> 1\n"
    assert run(sim, "sysctl", "-n", "net.inet.ip.forwarding").stdout == "1\n"
    refused = run(sim, "sysctl", "hw.ncpu=64")
    assert refused.returncode == 1
    assert refused.stderr == "sysctl: oid 'hw.ncpu' is read only\n"
