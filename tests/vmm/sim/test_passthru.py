"""The simulated bhyve's passthru device: wired memory and a ppt(4) function required."""

from __future__ import annotations

from supervisor.host import Host
from tests.vmm.sim.conftest import bhyve_argv, boot, finish, run, start


def test_passthru_needs_wired_memory(sim: Host) -> None:
    status, _, err = finish(start(sim, bhyve_argv(sim, "p1", "-s", "5,passthru,6/0/0")))
    assert status == 4
    assert err == (
        "passthru requires guest memory to be wired\n"
        "Device emulation initialization error: Operation not permitted\n"
    )


def test_passthru_needs_a_ppt_device(sim: Host) -> None:
    argv = bhyve_argv(sim, "p2", "-S", "-s", "5,passthru,2/0/0")
    status, _, err = finish(start(sim, argv))
    assert status == 4
    assert err.startswith("PCI device at 2/0/0 is not using the ppt(4) driver\n")
    assert run(sim, "devctl", "set", "driver", "-f", "pci0:2:0:0", "ppt").returncode == 0
    proc, console = boot(sim, "p2", "-S", "-s", "5,passthru,2/0/0")
    assert proc.poll() is None
    console.close()
    proc.kill()
    finish(proc)


def test_passthru_by_ppt_name(sim: Host) -> None:
    proc, console = boot(sim, "p3", "-S", "-s", "5,passthru,ppt0")
    assert proc.poll() is None
    console.close()
    proc.kill()
    finish(proc)
