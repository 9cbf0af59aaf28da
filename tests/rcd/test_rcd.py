"""rc.d/bhyvesupd: its syntax, its rc.subr variables, and what each command does.

The script is run by a POSIX shell with a small stand-in for FreeBSD's rc.subr
(``fake_rc.subr``, which records what the script asks of it). Its FreeBSD paths are
rooted in a temporary directory, as a chroot would, so nothing on this machine is
touched: ``/var/run`` and ``/var/log`` live there and ``%%PREFIX%%/bin`` holds a
recording ``bhyvesupctl``. Processes that stand for daemon(8) and bhyvesupd are real,
so ``stop`` really signals and waits and ``reload`` really delivers SIGHUP.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_real

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "rc.d" / "bhyvesupd"
PORT_COPY = ROOT / "packaging" / "freebsd" / "files" / "bhyvesupd.in"
FAKE_SUBR = Path(__file__).resolve().parent / "fake_rc.subr"

# A process that stands for bhyvesupd or daemon(8): its command line says which, it
# writes "HUP" to a file on SIGHUP and exits on SIGTERM.
_STAND_IN = """
import signal, sys, time
out = sys.argv[1]
def hup(*_):
    with open(out, "a") as f:
        f.write("HUP\\n")
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
open(out + ".ready", "w").close()
while True:
    time.sleep(0.05)
"""


class Box:
    """A root for one run of the script."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp
        self.prefix = tmp / "usr" / "local"
        self.run = tmp / "var" / "run"
        self.log = tmp / "var" / "log"
        for d in (self.prefix / "bin", self.prefix / "etc", self.run, self.log):
            d.mkdir(parents=True, exist_ok=True)
        self.record = tmp / "record"
        self.calls = tmp / "ctl-calls"
        self.rc_conf = tmp / "rc.conf"
        self.rc_conf.write_text('bhyvesupd_enable="YES"\n')
        (self.prefix / "etc" / "bhyvesupd.toml").write_text("")
        ctl = self.prefix / "bin" / "bhyvesupctl"
        ctl.write_text(f'#!/bin/sh\necho "$*" >> {self.calls}\nexit "${{CTL_STATUS:-0}}"\n')
        ctl.chmod(0o755)
        # A recording install(1): the real one would create directories on this host.
        fakebin = tmp / "fakebin"
        fakebin.mkdir()
        install = fakebin / "install"
        install.write_text(f'#!/bin/sh\necho "install $*" >> {self.record}\n')
        install.chmod(0o755)
        self.path = f"{fakebin}:{os.environ['PATH']}"
        text = SCRIPT.read_text()
        text = text.replace(". /etc/rc.subr", f". {FAKE_SUBR}")
        text = text.replace("%%PREFIX%%", str(self.prefix))
        text = text.replace("/var/run/", f"{self.run}/").replace("/var/log/", f"{self.log}/")
        self.script = tmp / "bhyvesupd"
        self.script.write_text(text)
        self.procs: list[subprocess.Popen[bytes]] = []

    def sh(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full = {
            "PATH": self.path,
            "RCD_LOG": str(self.record),
            "RCD_RC_CONF": str(self.rc_conf),
            **(env or {}),
        }
        return subprocess.run(
            ["sh", "-c", '. "$0" "$@"', str(self.script), *args],
            env=full,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def lines(self) -> list[str]:
        return self.record.read_text().splitlines() if self.record.exists() else []

    def var(self, name: str) -> str:
        found = [ln.split("=", 1)[1] for ln in self.lines() if ln.startswith(f"var {name}=")]
        assert found, f"{name} was never set"
        return found[-1]

    def ctl_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def stand_in(self, title: str, pidfile: Path) -> subprocess.Popen[bytes]:
        """A process whose command line holds *title*, its pid in *pidfile*."""
        out = self.root / f"{pidfile.name}.signals"
        proc = subprocess.Popen([sys.executable, "-c", _STAND_IN, str(out), title])
        self.procs.append(proc)
        # Reap it as soon as it exits, as init would: a zombie still answers kill -0.
        threading.Thread(target=proc.wait, daemon=True).start()
        deadline = time.monotonic() + 10
        while not Path(f"{out}.ready").exists():
            assert time.monotonic() < deadline, "stand-in did not start"
            time.sleep(0.02)
        pidfile.write_text(f"{proc.pid}\n")
        return proc

    def signals(self, pidfile: Path) -> list[str]:
        out = self.root / f"{pidfile.name}.signals"
        return out.read_text().split() if out.exists() else []

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    b = Box(tmp_path)
    try:
        yield b
    finally:
        b.close()


# -- syntax -------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", [["dash", "-n"], ["bash", "--posix", "-n"]])
def test_the_script_parses_in_a_posix_shell(shell: list[str]) -> None:
    require_real(shutil.which(shell[0]) is not None, shell[0])
    r = subprocess.run([*shell, str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_ports_copy_is_the_script() -> None:
    assert PORT_COPY.read_text() == SCRIPT.read_text()


def test_the_header_orders_it_after_networking_and_stops_it_at_shutdown() -> None:
    head = SCRIPT.read_text().split(". /etc/rc.subr")[0]
    assert "# PROVIDE: bhyvesupd\n" in head
    require = next(ln for ln in head.splitlines() if ln.startswith("# REQUIRE:"))
    assert {"LOGIN", "NETWORKING"} <= set(require.split()[2:])
    assert "# KEYWORD: shutdown\n" in head
    assert "rcshutdown_timeout" in head  # the 90 s host limit is documented


# -- start --------------------------------------------------------------------------------


def test_start_runs_bhyvesupd_under_daemon8_with_both_pid_files(box: Box) -> None:
    box.rc_conf.write_text('bhyvesupd_enable="YES"\nbhyvesupd_flags="--log-level debug"\n')
    r = box.sh("start")
    assert r.returncode == 0, r.stderr
    assert "load_rc_config bhyvesupd" in box.lines()
    assert box.var("name") == "bhyvesupd"
    assert box.var("rcvar") == "bhyvesupd_enable"
    assert box.var("command") == "/usr/sbin/daemon"
    assert box.var("procname") == "/usr/sbin/daemon"
    assert box.var("pidfile") == f"{box.run}/bhyvesupd.daemon.pid"
    assert box.var("required_modules") == "vmm nmdm"
    assert box.var("required_files") == f"{box.prefix}/etc/bhyvesupd.toml"
    assert box.var("extra_commands") == "reload"
    doit = next(ln for ln in box.lines() if ln.startswith("doit "))
    argv = doit.split()[1:]
    assert argv[0] == "/usr/sbin/daemon"
    program = argv.index(f"{box.prefix}/bin/bhyvesupd")
    daemon_opts, bhyvesupd_args = argv[1:program], argv[program + 1 :]
    # daemon(8): supervise and restart, its own pid file and the child's, output to a file
    assert "-r" in daemon_opts
    assert daemon_opts[daemon_opts.index("-P") + 1] == f"{box.run}/bhyvesupd.daemon.pid"
    assert daemon_opts[daemon_opts.index("-p") + 1] == f"{box.run}/bhyvesupd.pid"
    assert daemon_opts[daemon_opts.index("-o") + 1] == f"{box.log}/bhyvesupd/bhyvesupd.out"
    assert "-H" in daemon_opts  # reopen the output file after newsyslog rotates it
    # bhyvesupd_flags reach bhyvesupd, not daemon(8)
    assert bhyvesupd_args == [
        "--config",
        f"{box.prefix}/etc/bhyvesupd.toml",
        "--log-level",
        "debug",
    ]
    assert f"install -d -m 0755 {box.run}/bhyvesupd {box.log}/bhyvesupd" in box.lines()


def test_start_can_send_the_output_to_syslog_and_use_another_config(box: Box) -> None:
    box.rc_conf.write_text(
        'bhyvesupd_enable="YES"\nbhyvesupd_syslog="YES"\nbhyvesupd_config="/srv/b.toml"\n'
    )
    assert box.sh("start").returncode == 0
    argv = next(ln for ln in box.lines() if ln.startswith("doit ")).split()
    assert "-S" in argv
    assert argv[argv.index("-T") + 1] == "bhyvesupd"
    assert "-o" not in argv
    assert argv[argv.index("--config") + 1] == "/srv/b.toml"
    assert box.var("required_files") == "/srv/b.toml"


def test_nothing_starts_unless_enabled(box: Box) -> None:
    box.rc_conf.write_text("")
    r = box.sh("start")
    assert "bhyvesupd_enable" in r.stdout
    assert not any(ln.startswith("doit ") for ln in box.lines())


# -- stop, restart, reload ----------------------------------------------------------------


def test_a_plain_stop_leaves_the_guests_to_the_configuration(box: Box) -> None:
    supervisor = box.stand_in("daemon: bhyvesupd", box.run / "bhyvesupd.daemon.pid")
    r = box.sh("stop")
    assert r.returncode == 0, r.stderr
    assert supervisor.wait(timeout=10) == 0
    assert f"kill -TERM {supervisor.pid}" in box.lines()
    assert box.ctl_calls() == []


def test_host_shutdown_has_the_daemon_shut_every_guest_down_first(box: Box) -> None:
    supervisor = box.stand_in("daemon: bhyvesupd", box.run / "bhyvesupd.daemon.pid")
    r = box.sh("faststop", env={"rc_shutdown": "reboot"})
    assert r.returncode == 0, r.stderr
    calls = box.ctl_calls()
    assert calls == [f"-s {box.run}/bhyvesupd/bhyvesupd.sock daemon-on-stop shutdown --budget 80"]
    assert f"kill -TERM {supervisor.pid}" in box.lines()
    assert supervisor.wait(timeout=10) == 0
    assert "WARNING" not in r.stderr


def test_a_shutdown_timeout_not_below_rcshutdown_timeout_is_warned_about(box: Box) -> None:
    box.rc_conf.write_text(
        'bhyvesupd_enable="YES"\nbhyvesupd_shutdown_timeout="95"\nrcshutdown_timeout="90"\n'
    )
    box.stand_in("daemon: bhyvesupd", box.run / "bhyvesupd.daemon.pid")
    r = box.sh("faststop", env={"rc_shutdown": "reboot"})
    assert r.returncode == 0
    assert "rcshutdown_timeout (90)" in r.stderr
    assert box.ctl_calls()[0].endswith("daemon-on-stop shutdown --budget 95")


def test_host_shutdown_still_stops_the_daemon_when_it_does_not_answer(box: Box) -> None:
    supervisor = box.stand_in("daemon: bhyvesupd", box.run / "bhyvesupd.daemon.pid")
    r = box.sh("faststop", env={"rc_shutdown": "reboot", "CTL_STATUS": "1"})
    assert r.returncode == 0
    assert "did not take the shutdown request" in r.stderr
    assert supervisor.wait(timeout=10) == 0


def test_host_shutdown_with_no_daemon_running_is_quiet(box: Box) -> None:
    r = box.sh("faststop", env={"rc_shutdown": "reboot"})
    assert r.returncode == 0
    assert r.stderr == ""
    assert box.ctl_calls() == []


def test_restart_tells_the_daemon_to_keep_the_guests_then_stops_and_starts(box: Box) -> None:
    supervisor = box.stand_in("daemon: bhyvesupd", box.run / "bhyvesupd.daemon.pid")
    r = box.sh("restart")
    assert r.returncode == 0, r.stderr
    assert box.ctl_calls() == [f"-s {box.run}/bhyvesupd/bhyvesupd.sock daemon-on-stop keep"]
    assert supervisor.wait(timeout=10) == 0
    lines = box.lines()
    kill = lines.index(f"kill -TERM {supervisor.pid}")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("doit "))
    assert kill < start


def test_reload_sends_sighup_to_bhyvesupd_not_to_daemon8(box: Box) -> None:
    supervisor = box.stand_in("daemon: bhyvesupd", box.run / "bhyvesupd.daemon.pid")
    child = box.stand_in(f"{box.prefix}/bin/bhyvesupd --config x", box.run / "bhyvesupd.pid")
    r = box.sh("reload")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 10
    while box.signals(box.run / "bhyvesupd.pid") != ["HUP"]:
        assert time.monotonic() < deadline, "bhyvesupd got no SIGHUP"
        time.sleep(0.02)
    assert box.signals(box.run / "bhyvesupd.daemon.pid") == []
    assert supervisor.poll() is None  # nothing was stopped
    assert child.poll() is None


def test_reload_refuses_a_pid_file_that_names_another_program(box: Box) -> None:
    other = box.stand_in("something-else", box.run / "bhyvesupd.pid")
    r = box.sh("reload")
    assert r.returncode == 1
    assert "not running?" in r.stderr
    other.send_signal(signal.SIGTERM)
    other.wait(timeout=10)
    assert box.signals(box.run / "bhyvesupd.pid") == []


def test_a_shutdown_timeout_that_is_not_a_number_falls_back_to_80(box: Box) -> None:
    box.rc_conf.write_text('bhyvesupd_enable="YES"\nbhyvesupd_shutdown_timeout="1m"\n')
    box.stand_in("daemon: bhyvesupd", box.run / "bhyvesupd.daemon.pid")
    r = box.sh("faststop", env={"rc_shutdown": "reboot"})
    assert r.returncode == 0
    assert "not a number of seconds (1m); using 80" in r.stderr
    assert box.ctl_calls()[0].endswith("daemon-on-stop shutdown --budget 80")
