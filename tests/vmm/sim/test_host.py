from __future__ import annotations

import os
import stat
import sys

from supervisor.host import TOOL_PATHS, Host
from supervisor.vmm.sim import install
from supervisor.vmm.sim.host import TOOLS
from tests.vmm.sim.conftest import run


def test_lays_out_a_freebsd_host(sim: Host) -> None:
    for path in (
        "/dev/vmm",
        "/var/run/bhyvesupd",
        "/var/log/bhyvesupd",
        "/usr/local/etc/bhyvesupd/domains",
    ):
        assert os.path.isdir(sim.path(path)), path
    for name in ("BHYVE_UEFI.fd", "BHYVE_UEFI_CODE.fd", "BHYVE_UEFI_VARS.fd"):
        assert os.path.getsize(sim.path(f"/usr/local/share/uefi-firmware/{name}")) % 4096 == 0
    assert os.path.exists(sim.path("/dev/vmmctl"))


def test_tools_are_executables_inside_the_root(sim: Host) -> None:
    for tool in TOOLS:
        path = sim.tool(tool)
        assert path.startswith(sim.root + "/"), path
        assert path.endswith(TOOL_PATHS[tool])
        assert os.stat(path).st_mode & stat.S_IXUSR
        with open(path, encoding="utf-8") as f:
            assert f.readline() == f"#!{sys.executable}\n"


def test_install_is_idempotent_and_keeps_vms(sim_root: str) -> None:
    host = install(sim_root)
    assert run(host, "bhyvectl", "--vm=keep", "--create").returncode == 0
    again = install(sim_root, ncpu=2)
    assert again == host
    assert os.path.exists(host.vmm_device("keep"))
    assert run(host, "sysctl", "-n", "hw.ncpu").stdout == "2\n"


def test_14_has_no_vmmctl(sim_root: str) -> None:
    host = install(sim_root, freebsd="14.3")
    assert not os.path.exists(host.path("/dev/vmmctl"))
