from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.host import Host
from supervisor.vmm.sim.grub import parse_device_map
from tests.vmm.sim.conftest import Console, bhyve_argv, finish, run, start


def test_device_map_lines() -> None:
    assert parse_device_map("# map\n(hd0) /tank/d0\n\n(cd0)  /iso/x.iso\n") == {
        "hd0": "/tank/d0",
        "cd0": "/iso/x.iso",
    }
    with pytest.raises(ValueError, match="line 1"):
        parse_device_map("hd0 /tank/d0\n")


def test_grub_loads_then_bhyve_boots(sim: Host, tmp_path: Path) -> None:
    image = tmp_path / "linux.img"
    image.write_bytes(b"\0" * 4096)
    device_map = tmp_path / "device.map"
    device_map.write_text(f"(hd0) {image}\n")
    console = Console(sim, "/dev/nmdm-lin.1B")
    result = run(
        sim,
        "grub-bhyve",
        "-m",
        str(device_map),
        "-r",
        "hd0,msdos1",
        "-M",
        "1024M",
        "-c",
        "/dev/nmdm-lin.1A",
        "lin",
    )
    assert (result.returncode, result.stderr) == (0, "")
    console.expect(b"Booting a command list\r\n")
    proc = start(
        sim, bhyve_argv(sim, "lin", "-s", f"2,virtio-blk,{image}", memory="1G", bootrom=False)
    )
    console.expect(b"BHYVESIM guest lin boot 1\r\nlin# ")
    console.send(b"poweroff\r")
    assert finish(proc)[0] == 1


def test_grub_errors(sim: Host, tmp_path: Path) -> None:
    missing = run(sim, "grub-bhyve", "-m", str(tmp_path / "none.map"), "-r", "hd0", "x")
    assert missing.returncode == 1
    assert "error: cannot open" in missing.stderr
    device_map = tmp_path / "device.map"
    device_map.write_text(f"(hd0) {tmp_path / 'gone.img'}\n")
    assert run(sim, "grub-bhyve", "-m", str(device_map), "-r", "hd0", "x").returncode == 1
    usage = run(sim, "grub-bhyve", "--bogus", "x")
    assert usage.returncode == 64
