from __future__ import annotations

import pytest

from supervisor.errors import ERRORS_BY_CODE, GuestNotFoundError, HostToolError
from supervisor.host import FREEBSD, Host


def test_real_host_paths_are_freebsd_paths() -> None:
    assert FREEBSD.path("/dev/vmm/web1") == "/dev/vmm/web1"
    assert FREEBSD.tool("bhyvectl") == "/usr/sbin/bhyvectl"
    assert FREEBSD.vmm_device("web1") == "/dev/vmm/web1"


def test_rooted_host_maps_system_trees_only() -> None:
    host = Host(root="/srv/sim")
    assert host.path("/dev/nmdm-web1.1A") == "/srv/sim/dev/nmdm-web1.1A"
    assert host.tool("bhyve") == "/srv/sim/usr/sbin/bhyve"
    assert host.path("/var/run/bhyvesupd/bhyvesupd.sock").startswith("/srv/sim/var/")
    # Disk images outside the system trees are shared with the machine.
    assert host.path("/tank/vm/web1/disk0.img") == "/tank/vm/web1/disk0.img"
    assert host.path("/device") == "/device"
    assert host.unpath("/srv/sim/dev/vmm/web1") == "/dev/vmm/web1"
    assert host.unpath("/tmp/x") == "/tmp/x"


def test_relative_paths_and_unknown_tools_are_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        FREEBSD.path("dev/vmm")
    with pytest.raises(ValueError, match="frobctl"):
        FREEBSD.tool("frobctl")


def test_error_codes_are_unique_and_carry_detail() -> None:
    assert ERRORS_BY_CODE[GuestNotFoundError.code] is GuestNotFoundError
    err = HostToolError("bhyvectl failed", argv=["bhyvectl", "--vm=x"], status=1, stderr="e")
    assert err.to_data()["detail"]["status"] == 1


def test_every_host_tool_of_a_rooted_host_lives_under_its_root() -> None:
    # A simulated host must never resolve a tool to the machine's own /sbin or /bin.
    from supervisor.host import TOOL_PATHS

    host = Host(root="/srv/sim")
    for name in TOOL_PATHS:
        assert host.tool(name).startswith("/srv/sim/"), name
