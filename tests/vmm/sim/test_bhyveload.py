"""bhyveload then bhyve without a bootrom, the FreeBSD-guest lifecycle."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from supervisor.host import Host
from tests.vmm.sim.conftest import Console, bhyve_argv, finish, run, start


def disk(tmp_path: Path) -> str:
    path = str(tmp_path / "disk0.img")
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    return path


def load(host: Host, name: str, *args: str) -> tuple[int, str, str]:
    result = run(host, "bhyveload", *args, name)
    return result.returncode, result.stdout, result.stderr


def test_load_then_boot_then_reload_after_reboot(sim: Host, tmp_path: Path) -> None:
    image = disk(tmp_path)
    console = Console(sim, "/dev/nmdm-fbsd.1B")
    status, _, _ = load(sim, "fbsd", "-m", "512M", "-d", image, "-c", "/dev/nmdm-fbsd.1A")
    assert status == 0
    assert b"Booting...\r\n" in console.expect(b"Booting...\r\n")
    assert (
        run(sim, "bhyvectl", "--vm=fbsd", "--get-active-cpus").stdout == "active cpus:\t (none)\n"
    )
    argv = bhyve_argv(sim, "fbsd", "-s", f"2,virtio-blk,{image}", memory="512M", bootrom=False)
    proc = start(sim, argv)
    console.expect(b"BHYVESIM guest fbsd boot 1\r\nfbsd# ")
    console.send(b"reboot\r")
    assert finish(proc)[0] == 0
    # Re-running bhyveload re-initialises the existing VM: no destroy needed.
    assert load(sim, "fbsd", "-m", "512M", "-d", image)[0] == 0
    proc = start(sim, argv)
    console.expect(b"boot 2\r\nfbsd# ")


def test_bhyve_without_reload_cannot_reactivate_cpus(sim: Host, tmp_path: Path) -> None:
    load(sim, "fbsd", "-d", disk(tmp_path))
    console = Console(sim, "/dev/nmdm-fbsd.1B")
    proc = start(sim, bhyve_argv(sim, "fbsd", bootrom=False))
    console.expect(b"fbsd# ")
    console.send(b"reboot\r")
    assert finish(proc)[0] == 0
    again = finish(start(sim, bhyve_argv(sim, "fbsd", bootrom=False)))
    assert again == (71, "", "bhyve: could not activate CPU 0: Device busy\n")


def test_reload_after_a_kill_is_busy(sim: Host, tmp_path: Path) -> None:
    image = disk(tmp_path)
    load(sim, "fbsd", "-d", image)
    console = Console(sim, "/dev/nmdm-fbsd.1B")
    proc = start(sim, bhyve_argv(sim, "fbsd", bootrom=False))
    console.expect(b"fbsd# ")
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    assert load(sim, "fbsd", "-d", image) == (1, "", "vm_reinit: Device busy\n")


def test_memory_size_must_match_an_existing_vm(sim: Host, tmp_path: Path) -> None:
    image = disk(tmp_path)
    assert load(sim, "fbsd", "-m", "256M", "-d", image)[0] == 0
    assert load(sim, "fbsd", "-m", "1G", "-d", image) == (
        1,
        "",
        "vm_setup_memory: Invalid argument\n",
    )


def test_option_errors(sim: Host) -> None:
    status, _, err = load(sim, "fbsd", "-d", "/nonexistent.img")
    assert (status, err) == (64, "bhyveload: Could not open '/nonexistent.img'\n")
    status, _, err = load(sim, "fbsd", "-m", "lots")
    assert status == 64
    assert "Invalid memsize 'lots'" in err
    status, _, err = load(sim, "fbsd", "-Z")
    assert status == 1
    assert "usage: bhyveload" in err
    assert not os.path.exists(sim.vmm_device("fbsd"))


def test_loader_leaves_its_kernel_in_guest_memory(sim: Host, tmp_path: Path) -> None:
    load(sim, "fbsd", "-d", disk(tmp_path))
    fd = os.open(sim.vmm_device("fbsd"), os.O_RDONLY)
    try:
        assert os.pread(fd, 20, 0x200000) == b"BHYVESIM-KERNEL:fbsd"
    finally:
        os.close(fd)
