from __future__ import annotations

from supervisor.host import Host
from supervisor.vmm.sim import install
from tests.vmm.sim.conftest import run


def test_lists_kernel_and_klds_in_the_12_0_layout(sim: Host) -> None:
    result = run(sim, "kldstat")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "Id Refs Address                Size Name"
    assert lines[1].startswith(" 1 ")
    assert lines[1].endswith(" kernel")
    vmm = next(line for line in lines if line.endswith(" vmm.ko"))
    fid, refs, address, size, name = vmm.split()
    assert (fid, refs, name) == ("2", "1", "vmm.ko")
    assert address.startswith("0xffffffff")
    int(size, 16)
    # Size is right-aligned in 8 columns with one space before the name.
    assert vmm[vmm.index(address) + len(address) :].startswith(" " + size.rjust(8) + " ")


def test_module_queries(sim: Host) -> None:
    assert run(sim, "kldstat", "-q", "-m", "vmm").returncode == 0
    assert run(sim, "kldstat", "-q", "-m", "nmdm").returncode == 0
    # tuntap is compiled into GENERIC: found as a module, not as a file.
    assert run(sim, "kldstat", "-q", "-m", "if_tuntap").returncode == 0
    assert run(sim, "kldstat", "-q", "-n", "if_tuntap.ko").returncode == 1
    shown = run(sim, "kldstat", "-m", "vmm")
    assert shown.stdout.splitlines()[0] == "Id  Refs Name"
    assert shown.stdout.splitlines()[1].split()[1:] == ["1", "vmm"]


def test_file_lookup_accepts_the_name_with_or_without_ko(sim: Host) -> None:
    assert run(sim, "kldstat", "-q", "-n", "vmm").returncode == 0
    assert run(sim, "kldstat", "-q", "-n", "vmm.ko").returncode == 0
    verbose = run(sim, "kldstat", "-v", "-n", "vmm.ko").stdout
    assert "\tContains modules:\n\t\t Id Name\n" in verbose
    assert verbose.rstrip().endswith(" vmm")


def test_missing_module_says_so_unless_quiet(sim_root: str) -> None:
    host = install(sim_root, vmm_loaded=False)
    quiet = run(host, "kldstat", "-q", "-m", "vmm")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (1, "", "")
    loud = run(host, "kldstat", "-m", "vmm")
    assert loud.returncode == 1
    assert loud.stderr == "kldstat: can't find module vmm: No such file or directory\n"


def test_vmm_file_without_vtx_is_not_an_initialised_module(sim_root: str) -> None:
    host = install(sim_root, virtualization=False)
    assert run(host, "kldstat", "-q", "-n", "vmm.ko").returncode == 0
    assert run(host, "kldstat", "-q", "-m", "vmm").returncode == 1


def test_usage_error(sim: Host) -> None:
    result = run(sim, "kldstat", "-z")
    assert result.returncode == 1
    assert "usage: kldstat" in result.stderr
