"""bhyvesupctl against the real daemon running the example guests: the README's main job.

Each step is what a new user types; the assertions are what they would see.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_daemon_e2e import Sim, running_daemon

BHYVESUPCTL = str(Path(sys.executable).parent / "bhyvesupctl")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Sim]:
    with running_daemon(tmp_path) as s:
        yield s


def ctl(sim: Sim, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BHYVESUPCTL, "-s", sim.socket, *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def status(sim: Sim) -> dict[str, dict[str, Any]]:
    r = ctl(sim, "status", "--json")
    assert r.returncode == 0, r.stderr
    return {g["name"]: g for g in json.loads(r.stdout)}


def test_example_guests_run_and_answer_on_their_consoles(demo: Sim) -> None:
    demo.wait_for(
        "both examples running",
        lambda: {g["state"] for g in status(demo).values()} == {"running"},
        timeout=30,
    )
    assert set(status(demo)) == {"freebsd", "uefi"}
    # uefi depends on freebsd, which has a readiness pattern: it was ready first.
    assert status(demo)["freebsd"]["ready"] is True
    table = ctl(demo, "status").stdout
    assert table.splitlines()[0].split()[:2] == ["NAME", "STATE"]
    assert any(line.split()[:2] == ["uefi", "running"] for line in table.splitlines())

    # The UEFI example got its variable store made from the firmware's template.
    assert (demo.root / "var/vm/uefi/BHYVE_UEFI_VARS.fd").is_file()

    # A script drives the console: stdin goes to the guest, the guest's output comes back.
    demo.wait_console("freebsd", r"freebsd# ")
    r = ctl(demo, "console", "freebsd", "--drain", "0.5", stdin=b"echo typed-by-a-script\n")
    assert r.returncode == 0, r.stderr
    assert "typed-by-a-script" in r.stdout

    # The loader's banner and the kernel's both reached the console log that tail shows.
    r = ctl(demo, "tail", "-n", "65536", "freebsd")
    assert r.returncode == 0, r.stderr
    assert "BHYVESIM loader for freebsd" in r.stdout
    assert "BHYVESIM guest freebsd boot 1" in r.stdout


def test_reboot_reset_and_stop_from_the_cli(demo: Sim) -> None:
    demo.wait_for("freebsd at its prompt", lambda: demo.console_text("freebsd").endswith("# "))
    before = status(demo)["freebsd"]
    r = ctl(demo, "reboot", "freebsd")
    assert r.returncode == 0, r.stderr
    demo.wait_for(
        "freebsd rebooted",
        lambda: (g := status(demo)["freebsd"])["boot_count"] == 2 and g["state"] == "running",
    )
    assert status(demo)["freebsd"]["pid"] != before["pid"]

    demo.wait_for("uefi running", lambda: status(demo)["uefi"]["state"] == "running")
    r = ctl(demo, "reset", "uefi")
    assert r.returncode == 0, r.stderr
    demo.wait_for(
        "uefi reset",
        lambda: (g := status(demo)["uefi"])["boot_count"] == 2 and g["state"] == "running",
    )

    r = ctl(demo, "shutdown", "--wait", "all")
    assert r.returncode == 0, r.stderr
    assert {g["state"] for g in status(demo).values()} == {"shutoff"}
    assert not (demo.root / "dev/vmm/freebsd").exists()

    info = json.loads(ctl(demo, "dominfo", "freebsd", "--json").stdout)
    assert info["last_exit"]["code"] == 1  # the guest's own ACPI poweroff


def test_cli_exit_statuses(demo: Sim) -> None:
    r = ctl(demo, "dominfo", "nosuch")
    assert r.returncode == 3
    assert "nosuch" in r.stderr
    r = ctl(demo, "start")
    assert r.returncode == 2
    r = subprocess.run(
        [BHYVESUPCTL, "-s", str(demo.root / "no.sock"), "status"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert "no.sock" in r.stderr


def test_console_of_a_stopped_guest_says_so(demo: Sim) -> None:
    demo.wait_for("freebsd running", lambda: status(demo)["freebsd"]["state"] == "running")
    assert ctl(demo, "destroy", "freebsd").returncode == 0
    r = ctl(demo, "console", "freebsd", "--drain", "0.2")
    assert r.returncode == 0
    assert "freebsd is shutoff" in r.stderr
