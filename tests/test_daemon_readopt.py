"""Guests survive the daemon: kill -9 bhyvesupd, start it again, and it takes them over.

The real daemon, the real simulated bhyve processes and their console pairs: a guest
must keep running across the daemon's death, be re-adopted with its pid, boot count and
console, and a guest that ended while no daemon watched must be handled by its policy
with its real exit status.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_daemon_e2e import Sim, spawn_daemon, stop_daemon


@pytest.fixture
def host_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "host"
    yield root
    from supervisor.vmm.sim import teardown

    teardown(str(root))


def kill_daemon(s: Sim) -> None:
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(timeout=10)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_running_guests_are_readopted_after_kill_9(tmp_path: Path, host_root: Path) -> None:
    log = tmp_path / "daemon.out"
    first = spawn_daemon(host_root, log, "--no-examples")
    first.define("alpha")
    first.define("beta", on_crash="restart")
    first.define("gamma")
    pids = {}
    for name in ("alpha", "beta", "gamma"):
        pids[name] = first.call("domain.start", name=name)["pid"]
        first.wait_console(name, rf"{name}# ")
    first.type("alpha", "reboot")
    first.wait_for("alpha's second boot", lambda: first.info("alpha")["boot_count"] == 2)
    first.wait_state("alpha", "running")
    first.wait_console("alpha", r"boot 2[\s\S]*alpha# ")
    pids["alpha"] = first.info("alpha")["pid"]

    kill_daemon(first)
    # The guests did not notice.
    assert all(alive(pid) for pid in pids.values())
    # While no daemon watches, beta triple-faults and gamma powers off; their consoles
    # are typed on through the nmdm B side, as `cu -l /dev/nmdm-NAME.1B` would.
    for name, command in (("beta", "triple-fault"), ("gamma", "poweroff")):
        fd = os.open(host_root / f"dev/nmdm-{name}.1B", os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, command.encode() + b"\r")
        finally:
            os.close(fd)
    deadline = time.monotonic() + 10
    while (alive(pids["beta"]) or alive(pids["gamma"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pids["beta"])
    assert not alive(pids["gamma"])

    second = spawn_daemon(host_root, log, "--no-examples")
    try:
        a = second.info("alpha")
        assert (a["state"], a["pid"], a["boot_count"]) == ("running", pids["alpha"], 2)
        assert "adopted" in a["reason"]
        # Its console is held and logged again: what the guest prints now reaches it.
        second.type("alpha", "echo after-readoption")
        second.wait_console("alpha", "after-readoption")
        log_text = (host_root / "var/log/bhyvesupd/alpha.console.log").read_text()
        assert "after-readoption" in log_text

        # beta's triple fault (exit 3) was seen and its on_crash=restart applied.
        second.wait_for("beta restarted", lambda: second.info("beta")["state"] == "running")
        b = second.info("beta")
        assert b["last_exit"]["code"] == 3
        assert b["recent_crashes"] == 1
        assert b["pid"] != pids["beta"]

        # gamma powered off (exit 1): off, and its VM and pid file are gone.
        g = second.info("gamma")
        assert g["state"] == "shutoff"
        assert g["last_exit"]["code"] == 1
        second.wait_for("gamma's VM destroyed", lambda: not second.vmm("gamma").exists())
        assert not (host_root / "var/run/bhyvesupd/gamma.pid").exists()

        # An adopted guest is an ordinary one: a requested shutdown stops it.
        second.call("domain.shutdown", name="alpha", wait=True, timeout=10)
        assert second.info("alpha")["state"] == "shutoff"
        assert not alive(pids["alpha"])
    finally:
        stop_daemon(second)


def test_leftovers_without_a_bhyve_are_cleaned(tmp_path: Path, host_root: Path) -> None:
    log = tmp_path / "daemon.out"
    first = spawn_daemon(host_root, log, "--no-examples")
    first.define("delta")
    pid = first.call("domain.start", name="delta")["pid"]
    first.wait_console("delta", r"delta# ")
    kill_daemon(first)
    # bhyve killed by SIGKILL leaves its VM behind and no exit status at all.
    os.kill(pid, signal.SIGKILL)
    while alive(pid):
        time.sleep(0.02)
    assert (host_root / "dev/vmm/delta").exists()
    second = spawn_daemon(host_root, log, "--no-examples")
    try:
        second.wait_for("delta's VM removed", lambda: not second.vmm("delta").exists())
        d = second.info("delta")
        assert d["state"] == "shutoff"
        assert "not running" in d["reason"]
        assert not (host_root / "var/run/bhyvesupd/delta.pid").exists()
        # And it starts normally again.
        assert second.call("domain.start", name="delta")["state"] == "running"
    finally:
        stop_daemon(second)


def test_a_shutdown_under_way_is_finished_by_the_next_daemon(
    tmp_path: Path, host_root: Path
) -> None:
    log = tmp_path / "daemon.out"
    first = spawn_daemon(host_root, log, "--no-examples")
    first.define("stubborn", policy="<bhyvesup:stop-timeout>2</bhyvesup:stop-timeout>")
    pid = first.call("domain.start", name="stubborn")["pid"]
    first.wait_console("stubborn", r"stubborn# ")
    first.type("stubborn", "ignore-acpi")
    first.wait_console("stubborn", r"ignor")
    time.sleep(0.5)  # ACPI enabled: SIGTERM is a button press the guest ignores
    first.call("domain.shutdown", name="stubborn")
    assert first.info("stubborn")["state"] == "stopping"
    kill_daemon(first)
    second = spawn_daemon(host_root, log, "--no-examples")
    try:
        info = second.info("stubborn")
        assert (info["state"], info["pid"]) == ("stopping", pid)
        # The escalation was re-armed: forced off after the stop timeout.
        second.wait_for("forced off", lambda: second.info("stubborn")["state"] == "shutoff")
        assert second.info("stubborn")["last_exit"]["code"] == 1
        assert not alive(pid)
    finally:
        stop_daemon(second)


def test_a_first_boot_is_readopted_with_its_uptime_and_boot_count(
    tmp_path: Path, host_root: Path
) -> None:
    # A guest's first launch after the host came up records only its pid file; the
    # next daemon must still know how long it has run and that it is boot 1.
    log = tmp_path / "daemon.out"
    first = spawn_daemon(host_root, log, "--no-examples")
    first.define("solo")
    kill_daemon(first)
    second = spawn_daemon(host_root, log, "--no-examples")
    pid = second.call("domain.start", name="solo")["pid"]
    second.wait_console("solo", r"solo# ")
    time.sleep(1.5)
    kill_daemon(second)
    third = spawn_daemon(host_root, log, "--no-examples")
    try:
        info = third.info("solo")
        assert (info["state"], info["pid"], info["boot_count"]) == ("running", pid, 1)
        assert info["uptime"] >= 1.5
        # Its next boot is counted on from there, and recorded.
        third.type("solo", "reboot")
        third.wait_for("second boot", lambda: third.info("solo")["boot_count"] == 2)
        third.wait_state("solo", "running")
    finally:
        stop_daemon(third)


def test_a_running_guest_whose_pid_file_is_gone_is_adopted_not_destroyed(
    tmp_path: Path, host_root: Path
) -> None:
    # Another simulated host on this machine runs a guest of the same name: the
    # search for the lost bhyve must not take that one.
    other_root = tmp_path / "other"
    other = spawn_daemon(other_root, tmp_path / "other.out", "--no-examples")
    log = tmp_path / "daemon.out"
    first = spawn_daemon(host_root, log, "--no-examples")
    try:
        other.define("echo")
        other_pid = other.call("domain.start", name="echo")["pid"]
        first.define("echo")
        pid = first.call("domain.start", name="echo")["pid"]
        first.wait_console("echo", r"echo# ")
        kill_daemon(first)
        (host_root / "var/run/bhyvesupd/echo.pid").unlink()
        second = spawn_daemon(host_root, log, "--no-examples")
        try:
            e = second.info("echo")
            assert (e["state"], e["pid"]) == ("running", pid)
            assert alive(pid)
            assert second.vmm("echo").exists()
            assert (host_root / "var/run/bhyvesupd/echo.pid").read_text().strip() == str(pid)
            second.type("echo", "echo still-here")
            second.wait_console("echo", "still-here")
        finally:
            stop_daemon(second)
        assert alive(other_pid)
    finally:
        stop_daemon(other)
        from supervisor.vmm.sim import teardown

        teardown(str(other_root))


def orphan(host_root: Path, log: Path, name: str, *, until: str, **define: Any) -> int:
    """Start guest *name* under a daemon, wait until its VM exists (``vm``) or its
    console prompts (``prompt``), kill -9 the daemon; the pid of the bhyve left behind."""
    first = spawn_daemon(host_root, log, "--no-examples")
    first.define(name, **define)
    pid: int = first.call("domain.start", name=name)["pid"]
    if until == "vm":
        first.wait_for(f"{name}'s VM", lambda: first.vmm(name).exists())
    else:
        first.wait_console(name, rf"{name}# ")
    kill_daemon(first)
    return pid


def assert_taken_over(daemon: Sim, name: str, pid: int) -> None:
    """*daemon* runs *name* with the very bhyve *pid*, its VM and a pid file naming it."""
    info = daemon.info(name)
    assert (info["state"], info["pid"]) == ("running", pid)
    assert alive(pid)
    assert daemon.vmm(name).exists()
    assert (daemon.root / f"var/run/bhyvesupd/{name}.pid").read_text().strip() == str(pid)


@pytest.mark.parametrize("pid_file", ["kept", "lost"])
def test_a_bhyve_killed_with_its_daemon_before_its_title_is_adopted(
    tmp_path: Path, host_root: Path, pid_file: str
) -> None:
    # bhyve creates its VM, sets up its devices and only then sets its title: a
    # daemon restarted in between (rc.d restart while guests boot) must take that
    # bhyve over by the command it still shows, not destroy its VM as a leftover.
    log = tmp_path / "daemon.out"
    pid = orphan(host_root, log, "slow", until="vm", bhyve_args=("-o", "bhyvesim.title_delay=30"))
    if pid_file == "lost":
        (host_root / "var/run/bhyvesupd/slow.pid").unlink()
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert not f.read().startswith(b"bhyve: ")  # still untitled
    second = spawn_daemon(host_root, log, "--no-examples")
    try:
        assert_taken_over(second, "slow", pid)
    finally:
        stop_daemon(second)


@pytest.mark.parametrize("recorded", ["dead", "another process"])
def test_a_pid_file_naming_another_process_does_not_cost_the_guest_its_vm(
    tmp_path: Path, host_root: Path, recorded: str
) -> None:
    # The pid file is stale (the daemon died between a relaunch's spawn and its pid
    # file, or the pid went to someone else): the guest's bhyve still runs and must
    # be taken over, the other process left alone.
    import subprocess

    log = tmp_path / "daemon.out"
    pid = orphan(host_root, log, "echo", until="prompt")
    stranger = subprocess.Popen(["sleep", "60"])
    if recorded == "dead":
        stranger.kill()
        stranger.wait()
    try:
        (host_root / "var/run/bhyvesupd/echo.pid").write_text(f"{stranger.pid}\n")
        second = spawn_daemon(host_root, log, "--no-examples")
        try:
            assert_taken_over(second, "echo", pid)
            second.type("echo", "echo still-here")
            second.wait_console("echo", "still-here")
            if recorded == "another process":
                assert stranger.poll() is None
        finally:
            stop_daemon(second)
    finally:
        stranger.kill()
        stranger.wait()
