"""The simulated bhyve, run as the supervisor runs it: real processes, real ttys."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from supervisor.host import Host
from supervisor.vmm.sim import install, teardown
from supervisor.vmm.sim.hardware import load as load_hardware
from supervisor.vmm.sim.kernel import Kernel
from tests.vmm.sim.conftest import (
    Console,
    bhyve_argv,
    boot,
    finish,
    run,
    start,
    status_file,
    wait_for,
)


def ctl(host: Host, *args: str) -> str:
    return run(host, "bhyvectl", *args).stdout


def exists(host: Host, name: str) -> bool:
    return os.path.exists(host.vmm_device(name))


def acpi_enabled(host: Host, name: str) -> bool:
    # The guest starts its APs when it enables ACPI: the debug set empties.
    return ctl(host, f"--vm={name}", "--get-debug-cpus") == "debug cpus:\t (none)\n"


def test_process_title_threads_and_cpu_sets(sim: Host, tmp_path: object) -> None:
    disk = os.path.join(str(tmp_path), "disk0.img")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    proc, _ = boot(sim, "vm1", "-s", f"2,virtio-blk,{disk}", cpus=4)
    with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == b"bhyve: vm1"
    with open(f"/proc/{proc.pid}/comm", encoding="ascii") as f:
        assert f.read() == "bhyve\n"
    names = []
    for tid in os.listdir(f"/proc/{proc.pid}/task"):
        with open(f"/proc/{proc.pid}/task/{tid}/comm", encoding="ascii") as f:
            names.append(f.read().strip())
    assert sorted(names) == sorted(
        ["bhyve", "mevent", *(f"vcpu {i}" for i in range(4)), *(f"blk-2:0-{n}" for n in range(8))]
    )
    assert ctl(sim, "--vm=vm1", "--get-active-cpus") == "active cpus:\t 0, 1, 2, 3\n"
    assert ctl(sim, "--vm=vm1", "--get-suspended-cpus") == "suspended cpus:\t (none)\n"


def test_vcpu_threads_have_really_run(sim: Host) -> None:
    proc, _ = boot(sim, "vm1", cpus=2)
    for tid in os.listdir(f"/proc/{proc.pid}/task"):
        with open(f"/proc/{proc.pid}/task/{tid}/comm", encoding="ascii") as f:
            if not f.read().startswith("vcpu"):
                continue
        with open(f"/proc/{proc.pid}/task/{tid}/schedstat", encoding="ascii") as f:
            assert int(f.read().split()[0]) > 0


def test_memory_signature_and_boot_counter_across_reboot(sim: Host) -> None:
    proc, console = boot(sim, "vm1")
    fd = os.open(sim.vmm_device("vm1"), os.O_RDONLY)
    try:
        assert os.pread(fd, 15, 0x1000) == b"BHYVESIM:vm1:1\0"
        console.send(b"reboot\r")
        assert finish(proc)[0] == 0
        assert status_file(sim, proc.pid) == "exit 0"
        assert exists(sim, "vm1")
        proc = start(sim, bhyve_argv(sim, "vm1"))
        assert b"BHYVESIM guest vm1 boot 2\r\n" in console.expect(b"vm1# ")
        assert os.pread(fd, 15, 0x1000) == b"BHYVESIM:vm1:2\0"
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("command", "status", "recorded"),
    [
        (b"poweroff", 1, "exit 1"),
        (b"halt", 2, "exit 2"),
        (b"triple-fault", 3, "exit 3"),
        (b"abort", -signal.SIGABRT, "signal 6"),
    ],
)
def test_exit_status_table(sim: Host, command: bytes, status: int, recorded: str) -> None:
    proc, console = boot(sim, "vm1", cpus=2)
    console.send(command + b"\r")
    assert finish(proc)[0] == status
    assert status_file(sim, proc.pid) == recorded
    assert exists(sim, "vm1")
    if status >= 0:
        assert ctl(sim, "--vm=vm1", "--get-suspended-cpus") == "suspended cpus:\t 0, 1\n"


def test_poweroff_with_D_destroys_the_vm(sim: Host) -> None:
    proc, console = boot(sim, "vm1", "-D")
    console.send(b"poweroff\r")
    assert finish(proc)[0] == 1
    assert not exists(sim, "vm1")


def test_reset_with_D_keeps_the_vm(sim: Host) -> None:
    proc, console = boot(sim, "vm1", "-D")
    console.send(b"reboot\r")
    assert finish(proc)[0] == 0
    assert exists(sim, "vm1")


def test_sigterm_after_acpi_is_the_power_button(sim: Host) -> None:
    proc, console = boot(sim, "vm1", cpus=2)
    wait_for(lambda: acpi_enabled(sim, "vm1"), "ACPI enabled")
    proc.send_signal(signal.SIGTERM)
    console.expect(b"ACPI power button pressed: shutting down\r\n")
    assert finish(proc)[0] == 1
    assert status_file(sim, proc.pid) == "exit 1"


def test_a_guest_may_ignore_the_power_button(sim: Host) -> None:
    proc, console = boot(sim, "vm1", cpus=2)
    console.send(b"ignore-acpi\r")
    console.expect(b"ignored\r\nvm1# ")
    wait_for(lambda: acpi_enabled(sim, "vm1"), "ACPI enabled")
    proc.send_signal(signal.SIGTERM)
    console.send(b"echo alive\r")
    console.expect(b"alive\r\nvm1# ")
    assert proc.poll() is None
    assert run(sim, "bhyvectl", "--vm=vm1", "--force-poweroff").returncode == 0
    assert finish(proc)[0] == 1


def test_sigterm_before_acpi_kills_and_leaves_the_vm_busy(sim: Host) -> None:
    argv = bhyve_argv(sim, "vm1", "-o", "bhyvesim.acpi_delay=never")
    console = Console(sim, "/dev/nmdm-vm1.1B")
    proc = start(sim, argv)
    console.expect(b"vm1# ")
    proc.send_signal(signal.SIGTERM)
    assert finish(proc)[0] == -signal.SIGTERM
    assert status_file(sim, proc.pid) == "signal 15"
    assert ctl(sim, "--vm=vm1", "--get-active-cpus") == "active cpus:\t 0\n"
    assert ctl(sim, "--vm=vm1", "--get-suspended-cpus") == "suspended cpus:\t (none)\n"
    again = start(sim, bhyve_argv(sim, "vm1"))
    assert finish(again) == (4, "", "bhyve: vm_openf: Device busy\n")
    # Destroying first is the way out.
    ctl(sim, "--vm=vm1", "--destroy")
    proc = start(sim, bhyve_argv(sim, "vm1"))
    assert b"boot 1\r\n" in console.expect(b"vm1# ")


def test_ebusy_after_kill_on_14(sim_root: str) -> None:
    host = install(sim_root, freebsd="14.3")
    proc, _ = boot(host, "vm1")
    proc.kill()
    assert finish(proc)[0] == -signal.SIGKILL
    assert finish(start(host, bhyve_argv(host, "vm1"))) == (4, "", "vm_reinit: Device busy\n")


def test_force_reset_and_force_poweroff(sim: Host) -> None:
    proc, _ = boot(sim, "vm1")
    assert run(sim, "bhyvectl", "--vm=vm1", "--force-reset").returncode == 0
    assert finish(proc)[0] == 0
    proc, _ = boot(sim, "vm1")
    assert run(sim, "bhyvectl", "--vm=vm1", "--force-poweroff").returncode == 0
    assert finish(proc)[0] == 1
    # The suspend reason stays until the VM is reinitialised.
    second = run(sim, "bhyvectl", "--vm=vm1", "--force-poweroff")
    assert (second.returncode, second.stdout) == (255, "errno = 37\n")


@pytest.mark.parametrize(("freebsd", "status"), [("15.0", 4), ("14.3", 1)])
def test_destroy_under_a_running_bhyve(sim_root: str, freebsd: str, status: int) -> None:
    host = install(sim_root, freebsd=freebsd)
    proc, _ = boot(host, "vm1")
    assert run(host, "bhyvectl", "--vm=vm1", "--destroy").returncode == 0
    assert finish(proc) == (status, "", "vm_run error -1, errno 6\n")
    assert not exists(host, "vm1")


def test_nmi_reaches_the_guest(sim: Host) -> None:
    _, console = boot(sim, "vm1", cpus=2)
    run(sim, "bhyvectl", "--vm=vm1", "--inject-nmi", "--cpu=1")
    console.expect(b"NMI received on vcpu 1\r\n")
    stats = ctl(sim, "--vm=vm1", "--get-stats", "--cpu=1")
    assert "number of NMIs delivered to vcpu        \t1\n" in stats


def test_write_disk_writes_the_first_disk(sim: Host, tmp_path: object) -> None:
    disk = os.path.join(str(tmp_path), "d.img")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    _, console = boot(sim, "vm1", "-s", f"3,virtio-blk,{disk}")
    console.send(b"write-disk 16\r")
    console.expect(f"wrote 16 KiB to {disk}\r\n".encode())
    with open(disk, "rb") as f:
        data = f.read(16 * 1024 + 1)
    assert data.startswith(b"BHYVESIM vm1 ")
    assert data[16 * 1024] == 0


def test_no_bootrom_and_no_vm_on_15(sim: Host) -> None:
    result = finish(start(sim, bhyve_argv(sim, "vm1", bootrom=False)))
    assert result == (4, "", "bhyve: no bootrom was configured\n")
    assert not exists(sim, "vm1")


def test_no_bootrom_and_no_vm_on_14_leaves_an_empty_vm(sim_root: str) -> None:
    host = install(sim_root, freebsd="14.3")
    result = finish(start(host, bhyve_argv(host, "vm1", bootrom=False)))
    assert result == (4, "", "virtual machine cannot be booted\n")
    assert exists(host, "vm1")


def test_memory_size_change_needs_a_destroy(sim: Host) -> None:
    proc, console = boot(sim, "vm1", memory="512M")
    console.send(b"reboot\r")
    assert finish(proc)[0] == 0
    result = finish(start(sim, bhyve_argv(sim, "vm1", memory="1G")))
    assert result == (4, "", "Unable to setup memory (22)\n")


def test_console_must_be_a_tty(sim: Host, tmp_path: object) -> None:
    plain = sim.path("/dev/notatty")
    with open(plain, "w", encoding="ascii"):
        pass
    argv = bhyve_argv(sim, "vm1", console=False)
    argv[-1:-1] = ["-l", "com1,/dev/notatty"]
    assert finish(start(sim, argv)) == (
        4,
        "",
        "Unable to initialize backend '/dev/notatty' for LPC device com1\n"
        "Device emulation initialization error: Inappropriate ioctl for device\n",
    )


def test_com_ports_are_unused_without_lpc(sim: Host) -> None:
    argv = [sim.tool("bhyve"), "-c", "1", "-m", "256M", "-l", "com1,/dev/nowhere"]
    argv += ["-l", "bootrom,/usr/local/share/uefi-firmware/BHYVE_UEFI.fd", "vm1"]
    proc = start(sim, argv)
    wait_for(lambda: "0" in ctl(sim, "--vm=vm1", "--get-active-cpus"), "vCPUs active")
    assert proc.poll() is None
    run(sim, "bhyvectl", "--vm=vm1", "--force-poweroff")
    assert finish(proc)[0] == 1


def test_missing_disk_is_bhyves_two_line_error(sim: Host) -> None:
    argv = bhyve_argv(sim, "vm1", "-s", "2,virtio-blk,/nonexistent/disk.img")
    assert finish(start(sim, argv)) == (
        4,
        "",
        "bhyve: Could not open backing file: /nonexistent/disk.img: No such file or directory\n"
        "Device emulation initialization error: No such file or directory\n",
    )


def test_vm_device_lives_until_destroy(sim: Host) -> None:
    proc, console = boot(sim, "vm1")
    console.send(b"poweroff\r")
    assert finish(proc)[0] == 1
    fd = os.open(sim.vmm_device("vm1"), os.O_RDONLY)
    try:
        assert os.pread(fd, 14, 0x1000) == b"BHYVESIM:vm1:1"
    finally:
        os.close(fd)
    run(sim, "bhyvectl", "--vm=vm1", "--destroy")
    assert not exists(sim, "vm1")


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["-h"], 0),
        (["-Z", "vm1"], 1),
        ([], 1),
        (["-m", "lots", "vm1"], 64),
        (["-s", "2,nosuchdevice", "vm1"], 4),
        (["-c", "cpus=2,sockets=3", "vm1"], 4),
    ],
)
def test_command_line_exit_statuses(sim: Host, args: list[str], status: int) -> None:
    result = subprocess.run(
        [sim.tool("bhyve"), *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == status
    assert status_file(sim, _last_pid(sim)) == f"exit {status}"


def _last_pid(host: Host) -> int:
    files = os.listdir(host.path("/var/run/bhyvesim"))
    newest = max(
        files, key=lambda n: os.stat(os.path.join(host.path("/var/run/bhyvesim"), n)).st_mtime_ns
    )
    return int(newest.split(".")[0])


def test_config_dump_prints_the_tree_and_exits_1(sim: Host) -> None:
    argv = bhyve_argv(sim, "vm1", "-o", "config.dump=1")
    status, out, _ = finish(start(sim, argv))
    assert status == 1
    assert "name=vm1\n" in out
    assert "pci.0.31.0.device=lpc\n" in out
    assert not exists(sim, "vm1")


def test_too_many_vcpus_without_unrestricted_guest(sim_root: str) -> None:
    host = install(sim_root, unrestricted_guest=False)
    result = finish(start(host, bhyve_argv(host, "vm1", cpus=2, bootrom=False)))
    run(host, "bhyvectl", "--vm=vm1", "--create")
    result = finish(start(host, bhyve_argv(host, "vm1", cpus=2, bootrom=False)))
    assert result == (4, "", "2 vCPUs requested but only 1 available\n")


def test_teardown_kills_running_guests(sim_root: str) -> None:
    host = install(sim_root)
    proc, _ = boot(host, "vm1")
    assert proc.pid in teardown(sim_root)
    assert finish(proc)[0] == -signal.SIGKILL


def test_teardown_also_ends_a_bhyve_still_starting_up(sim_root: str) -> None:
    # Launched, but teardown runs before its interpreter has got as far as
    # registering: it must not live on after the host has gone.
    host = install(sim_root)
    proc = start(host, bhyve_argv(host, "vm1"))
    teardown(sim_root)
    assert finish(proc)[0] == -signal.SIGKILL
    assert not exists(host, "vm1")


def test_kernel_state_is_shared_with_bhyvectl(sim: Host) -> None:
    proc, _ = boot(sim, "vm1", cpus=2)
    vm = Kernel(sim.root, load_hardware(sim.root)).get("vm1")
    assert vm.pid == proc.pid
    assert vm.active == [0, 1]


def test_capability_listings(sim: Host) -> None:
    devices = subprocess.run(
        [sim.tool("bhyve"), "-s", "help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert devices.returncode == 0
    assert "virtio-blk" in devices.stdout.split()
    lpc = subprocess.run(
        [sim.tool("bhyve"), "-l", "help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert lpc.returncode == 0
    assert "bootrom" in lpc.stdout.split()


def test_running_guest_memory_map_and_rtc(sim: Host) -> None:
    boot(sim, "vm1", "-S", memory="2G")
    out = ctl(sim, "--vm=vm1", "--get-memseg", "--get-memmap", "--get-rtc-time")
    assert out.startswith(
        "ID  Length      Name\n"
        "0   2048MB      sysmem\n"
        "8   16384kB     bootrom\n"
        "Address     Length      Segment     Offset      Prot  Flags\n"
        "0           2048MB      sysmem      0           RWX   \0wired\n"
        "FFE00000    2048kB      bootrom     E00000      R-X   \n"
        "rtc time 0x"
    )
    assert not out.startswith("rtc time 0:", out.index("rtc time"))


def test_bootrom_segment_id_on_14(sim_root: str) -> None:
    host = install(sim_root, freebsd="14.3")
    boot(host, "vm1")
    assert "1   16384kB     bootrom\n" in ctl(host, "--vm=vm1", "--get-memseg")


def test_ahci_ports_get_their_own_block_threads(sim: Host, tmp_path: object) -> None:
    disk = os.path.join(str(tmp_path), "sata.img")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    proc, _ = boot(sim, "vm1", "-s", f"4,ahci-hd,{disk}")
    names = set()
    for tid in os.listdir(f"/proc/{proc.pid}/task"):
        with open(f"/proc/{proc.pid}/task/{tid}/comm", encoding="ascii") as f:
            names.add(f.read().strip())
    assert {f"blk-4:0:0-{n}" for n in range(8)} <= names
