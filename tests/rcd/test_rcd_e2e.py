"""rc.d/bhyvesupd driving the real daemon on the simulated host, through the real CLI.

The pid file rc.subr signals holds bhyvesupd's own pid here (there is no daemon(8) on
this machine: it would forward the SIGTERM to exactly that process).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from tests.rcd.test_rcd import Box
from tests.test_daemon_e2e import Sim, running_daemon

BHYVESUPCTL = str(Path(sys.executable).parent / "bhyvesupctl")


def rc_box(tmp_path: Path, sim: Sim) -> Box:
    box = Box(tmp_path / "rc")
    ctl = box.prefix / "bin" / "bhyvesupctl"
    ctl.write_text(f'#!/bin/sh\necho "$*" >> {box.calls}\nexec {BHYVESUPCTL} "$@"\n')
    box.rc_conf.write_text(f'bhyvesupd_enable="YES"\nbhyvesupd_socket="{sim.socket}"\n')
    (box.run / "bhyvesupd.daemon.pid").write_text(f"{sim.proc.pid}\n")
    # Reap the daemon as init would once it exits: rc.subr waits with kill -0.
    threading.Thread(target=sim.proc.wait, daemon=True).start()
    return box


def bhyve_running(sim: Sim, name: str) -> bool:
    pid_file = sim.root / "var/run/bhyvesupd" / f"{name}.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return state != "Z"


def start_guests(sim: Sim, *names: str) -> None:
    for name in names:
        sim.define(name)
        sim.call("domain.start", name=name)
    for name in names:
        sim.wait_state(name, "running")


def test_host_shutdown_shuts_every_guest_down_before_the_daemon_exits(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "--no-examples", "--keep-guests") as sim:
        start_guests(sim, "a1", "a2")
        box = rc_box(tmp_path, sim)
        r = box.sh("faststop", env={"rc_shutdown": "reboot"})
        assert r.returncode == 0, r.stderr
        assert "Shutting down bhyve guests (up to 80 s)." in r.stdout
        assert sim.proc.wait(timeout=30) == 0
        assert not bhyve_running(sim, "a1")
        assert not bhyve_running(sim, "a2")


def test_restart_keeps_the_guests_even_when_stopping_would_shut_them_down(
    tmp_path: Path,
) -> None:
    # Without --keep-guests the simulated daemon shuts guests down when it stops, as
    # daemon.on_stop = "shutdown" would.
    with running_daemon(tmp_path, "--no-examples") as sim:
        start_guests(sim, "b1")
        box = rc_box(tmp_path, sim)
        r = box.sh("restart")
        assert r.returncode == 0, r.stderr
        assert sim.proc.wait(timeout=30) == 0
        assert bhyve_running(sim, "b1")
        assert any(line.startswith("doit ") for line in box.lines())
