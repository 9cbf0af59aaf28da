from __future__ import annotations

import os

import pytest

from supervisor.host import Host
from supervisor.vmm.sim import install
from supervisor.vmm.sim.bhyvectl import format_rtc, humanize
from tests.vmm.sim.conftest import run


def ctl(host: Host, *args: str) -> tuple[int, str, str]:
    result = run(host, "bhyvectl", *args)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (2 * 1024**3, "2048MB"),
        (16 * 1024**2, "16384kB"),
        (64 * 1024, "65536B"),
        (256 * 1024**2, "256MB"),
        (2 * 1024**2, "2048kB"),
        (9 * 1024**3, "9216MB"),
        (100 * 1024**3, "100GB"),
    ],
)
def test_humanize_number_sizes(size: int, text: str) -> None:
    assert humanize(size) == text


def test_rtc_format_pads_the_day_and_prints_zero_plainly() -> None:
    assert format_rtc(0x66509EB3) == "rtc time 0x66509eb3: Fri May 24 14:05:39 2024\n"
    assert format_rtc(0) == "rtc time 0: Thu Jan 01 00:00:00 1970\n"


def test_missing_vm_is_a_vm_open_error_on_stderr(sim: Host) -> None:
    assert ctl(sim, "--vm=nope", "--get-active-cpus") == (
        1,
        "",
        "vm_open: nope could not be opened: No such file or directory\n",
    )


def test_vm_is_required_and_unknown_options_are_usage_errors(sim: Host) -> None:
    status, out, err = ctl(sim, "--get-stats")
    assert (status, out) == (1, "")
    assert err.startswith("Usage: bhyvectl --vm=<vmname>\n")
    status, _, err = ctl(sim, "--vm=x", "--get-lowmem")
    assert status == 1
    assert err.startswith("bhyvectl: unrecognized option `--get-lowmem'\nUsage:")


def test_create_makes_the_device_and_destroy_removes_it(sim: Host) -> None:
    assert ctl(sim, "--vm=vm1", "--create") == (0, "", "")
    assert os.path.exists(sim.vmm_device("vm1"))
    assert ctl(sim, "--vm", "vm1", "--get-active-cpus", "--get-suspended-cpus") == (
        0,
        "active cpus:\t (none)\nsuspended cpus:\t (none)\n",
        "",
    )
    assert ctl(sim, "--vm=vm1", "--destroy") == (0, "", "")
    assert not os.path.exists(sim.vmm_device("vm1"))


def test_create_of_an_existing_vm_opens_it_on_15_and_fails_on_14(sim_root: str) -> None:
    host = install(sim_root)
    assert ctl(host, "--vm=vm1", "--create") == (0, "", "")
    assert ctl(host, "--vm=vm1", "--create") == (0, "", "")
    host = install(sim_root, freebsd="14.3")
    assert ctl(host, "--vm=vm1", "--create") == (255, "errno = 17\n", "")


def test_memseg_and_memmap_shapes(sim: Host) -> None:
    ctl(sim, "--vm=vm1", "--create")
    status, out, _ = ctl(sim, "--vm=vm1", "--set-mem=2048", "--get-memseg", "--get-memmap")
    assert status == 0
    assert out == (
        "ID  Length      Name\n"
        "0   2048MB      sysmem\n"
        "Address     Length      Segment     Offset      Prot  Flags\n"
        "0           2048MB      sysmem      0           RWX   \n"
    )


def test_big_guest_is_split_around_the_pci_hole(sim: Host) -> None:
    ctl(sim, "--vm=big", "--create", "--set-mem=8192")
    _, out, _ = ctl(sim, "--vm=big", "--get-memseg", "--get-memmap")
    assert "0   9216MB      sysmem\n" in out
    assert "0           3072MB      sysmem      0           RWX   \n" in out
    assert "100000000   5120MB      sysmem      100000000   RWX   \n" in out


def test_memory_size_cannot_change(sim: Host) -> None:
    ctl(sim, "--vm=vm1", "--create", "--set-mem=512")
    assert ctl(sim, "--vm=vm1", "--set-mem=1024") == (255, "errno = 22\n", "")


def test_second_force_request_is_ealready(sim: Host) -> None:
    ctl(sim, "--vm=vm1", "--create")
    assert ctl(sim, "--vm=vm1", "--force-poweroff") == (0, "", "")
    assert ctl(sim, "--vm=vm1", "--force-poweroff") == (255, "errno = 37\n", "")
    assert ctl(sim, "--vm=vm1", "--force-reset") == (255, "errno = 37\n", "")
    # The failed request stops the invocation before --destroy.
    assert ctl(sim, "--vm=vm1", "--force-reset", "--destroy") == (255, "errno = 37\n", "")
    assert os.path.exists(sim.vmm_device("vm1"))


def test_topology_and_stats_shapes(sim: Host) -> None:
    ctl(sim, "--vm=vm1", "--create")
    _, out, _ = ctl(sim, "--vm=vm1", "--get-cpu-topology", "--get-stats", "--cpu=1")
    lines = out.splitlines()
    assert lines[0] == "vcpu1 stats:"
    assert "Resident memory                         \t0" in lines
    for line in lines[1:-1]:
        desc, value = line.rsplit("\t", 1)
        assert len(desc) >= 40
        int(value)
    assert lines[-1] == "cpu_topology:\tsockets=1, cores=1, threads=1, maxcpus=8"


def test_stats_for_a_vcpu_beyond_maxcpus_print_nothing(sim: Host) -> None:
    ctl(sim, "--vm=vm1", "--create")
    assert ctl(sim, "--vm=vm1", "--get-stats", "--cpu=99") == (0, "", "")


def test_machdep_errors_are_silent_on_15_and_reported_on_14(sim_root: str) -> None:
    host = install(sim_root)
    ctl(host, "--vm=vm1", "--create")
    assert ctl(host, "--vm=vm1", "--inject-nmi", "--cpu=999") == (0, "", "")
    host = install(sim_root, freebsd="14.3")
    assert ctl(host, "--vm=vm1", "--inject-nmi", "--cpu=999") == (255, "errno = 22\n", "")


def test_set_rtc_time_then_read_it(sim: Host) -> None:
    ctl(sim, "--vm=vm1", "--create")
    assert ctl(sim, "--vm=vm1", "--get-rtc-time")[1] == "rtc time 0: Thu Jan 01 00:00:00 1970\n"
    ctl(sim, "--vm=vm1", "--set-rtc-time=0x66509eb3")
    out = ctl(sim, "--vm=vm1", "--get-rtc-time")[1]
    # The RTC keeps running from the value set, so allow the seconds to have moved on.
    assert out.startswith("rtc time 0x66509e")
    assert ": Fri May 24 14:05:" in out


def test_debug_cpus_exist_only_on_15(sim_root: str) -> None:
    host = install(sim_root)
    ctl(host, "--vm=vm1", "--create")
    assert ctl(host, "--vm=vm1", "--get-debug-cpus") == (0, "debug cpus:\t (none)\n", "")
    host = install(sim_root, freebsd="14.3")
    assert ctl(host, "--vm=vm1", "--get-debug-cpus")[0] == 1


def test_no_vmm_means_no_vm_can_be_opened(sim_root: str) -> None:
    host = install(sim_root, vmm_loaded=False)
    status, _, err = ctl(host, "--vm=vm1", "--create")
    assert status == 1
    assert err.startswith("vm_open: vm1 could not be opened: ")
