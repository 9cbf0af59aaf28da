"""End to end: the real bhyvesupd process on the simulated host, driven over its socket.

Real processes (the daemon, the simulated bhyve and its scripted guest, bhyvectl), real
ptys (the console pairs) and the real Unix socket: what a user of ``bhyvesupctl`` meets.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from supervisor.rpc.client import Client

NS = "urn:bhyve-supervisor:domain:1"


def guest_xml(
    name: str,
    *,
    on_crash: str = "destroy",
    policy: str = "",
    vcpus: int = 1,
    bhyveload: bool = False,
    bhyve_args: tuple[str, ...] = (),
) -> str:
    """A guest with one disk and an nmdm console; UEFI unless *bhyveload*; *bhyve_args*
    go to bhyve as ``<bhyve:commandline>`` arguments."""
    commandline = "".join(f"<bhyve:arg value='{a}'/>" for a in bhyve_args)
    if commandline:
        commandline = (
            "<bhyve:commandline xmlns:bhyve='http://libvirt.org/schemas/domain/bhyve/1.0'>"
            f"{commandline}</bhyve:commandline>"
        )
    loader = (
        ""
        if bhyveload
        else "<loader readonly='yes' type='pflash'>"
        "/usr/local/share/uefi-firmware/BHYVE_UEFI.fd</loader>"
    )
    return f"""<domain type='bhyve'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type>hvm</type>
    {loader}
  </os>
  <on_crash>{on_crash}</on_crash>
  <metadata>
    <bhyvesup:policy xmlns:bhyvesup='{NS}'>{policy}</bhyvesup:policy>
  </metadata>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/vm/{name}/disk0.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='nmdm'>
      <source master='/dev/nmdm-{name}.1A' slave='/dev/nmdm-{name}.1B'/>
    </serial>
  </devices>
  {commandline}
</domain>
"""


class Sim:
    """A running daemon on a simulated host, and helpers to drive it."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.proc = proc
        self.socket = str(root / "var/run/bhyvesupd/bhyvesupd.sock")

    def client(self) -> Client:
        return Client(self.socket, timeout=30.0)

    def call(self, method: str, **params: Any) -> Any:
        with self.client() as c:
            return c.call(method, **params)

    def define(self, name: str, **kw: Any) -> None:
        disk = self.root / f"var/vm/{name}/disk0.img"
        disk.parent.mkdir(parents=True, exist_ok=True)
        with open(disk, "wb") as f:
            f.truncate(16 << 20)
        self.call("domain.define", xml=guest_xml(name, **kw))

    def info(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.call("domain.get_info", name=name)
        return info

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def wait_state(self, name: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
        self.wait_for(f"{name} {state}", lambda: self.info(name)["state"] == state, timeout)
        return self.info(name)

    def console_text(self, name: str) -> str:
        out = self.call("console.tail", name=name)
        return base64.b64decode(out["data"]).decode("utf-8", "replace")

    def wait_console(self, name: str, pattern: str, timeout: float = 20.0) -> None:
        self.wait_for(
            f"{pattern!r} on {name}'s console",
            lambda: re.search(pattern, self.console_text(name)) is not None,
            timeout,
        )

    def type(self, name: str, line: str) -> None:
        """Type *line* on the guest's console through a read-write attachment."""
        with self.client() as c:
            c.call("console.attach", name=name, mode="rw")
            raw, _ = c.raw_socket()
            with raw:
                raw.sendall(line.encode() + b"\r")
                time.sleep(0.2)

    def vmm(self, name: str) -> Path:
        return self.root / "dev/vmm" / name


def spawn_daemon(root: Path, log_path: Path, *extra: str) -> Sim:
    """Start bhyvesupd on the simulated host at *root*; return once its socket is up."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.daemon", "--sim", str(root), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    s = Sim(root, proc)
    deadline = time.monotonic() + 30
    # A socket left by a killed daemon does not count: wait for this one's.
    while not (os.path.exists(s.socket) and _answers(s)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("daemon did not start:\n" + log_path.read_text())
        time.sleep(0.05)
    return s


def _answers(s: Sim) -> bool:
    try:
        s.call("connect.is_alive")
    except OSError:
        return False
    return True


def stop_daemon(s: Sim) -> None:
    """SIGTERM the daemon (it shuts its guests down) and wait for it."""
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)
    try:
        s.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        s.proc.kill()


@contextmanager
def running_daemon(tmp_path: Path, *extra: str) -> Iterator[Sim]:
    """bhyvesupd on a new simulated host under *tmp_path*, stopped (SIGTERM) at the end."""
    root = tmp_path / "host"
    s = spawn_daemon(root, tmp_path / "daemon.out", *extra)
    try:
        yield s
    finally:
        stop_daemon(s)
        from supervisor.vmm.sim import teardown

        teardown(str(root))


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    with running_daemon(tmp_path, "--no-examples") as s:
        yield s


def test_connect_calls_answer(sim: Sim) -> None:
    assert sim.call("connect.get_type") == "BHYVE"
    assert sim.call("connect.is_alive") is True
    assert sim.call("connect.is_encrypted") is False
    status = sim.call("daemon.status")
    assert status["guests"] == 0
    assert status["states"] == {}
    # What the simulated bhyve's probe shows (libvirt's capability names).
    assert status["capabilities"] == sorted(status["capabilities"])
    assert "LPC_BOOTROM" in status["capabilities"]


def test_define_start_reboot_poweroff(sim: Sim) -> None:
    sim.define("web1")
    info = sim.call("domain.start", name="web1")
    assert info["state"] == "running", info
    assert sim.call("daemon.status")["states"] == {"running": 1}
    first_pid = info["pid"]
    sim.wait_console("web1", r"web1.*boot 1")

    # A reboot inside the guest: bhyve exits 0 and the actor brings it back.
    sim.wait_console("web1", r"web1# ")
    sim.type("web1", "reboot")
    sim.wait_for("second boot", lambda: sim.info("web1")["boot_count"] == 2)
    info = sim.wait_state("web1", "running")
    assert info["pid"] != first_pid
    sim.wait_console("web1", r"boot 2")
    log = (sim.root / "var/log/bhyvesupd/web1.console.log").read_text(errors="replace")
    assert re.search(r"boot 1", log)
    assert re.search(r"boot 2", log)

    # A poweroff inside the guest: shut off, and the VM is destroyed.
    sim.wait_console("web1", r"boot 2[\s\S]*web1# ")
    sim.type("web1", "poweroff")
    info = sim.wait_state("web1", "shutoff")
    assert info["last_exit"]["code"] == 1
    sim.wait_for("/dev/vmm/web1 destroyed", lambda: not sim.vmm("web1").exists())
    # The daemon's count of guests by state follows every change, and an undefine.
    assert sim.call("daemon.status")["states"] == {"shutoff": 1}
    sim.define("web2")
    assert sim.call("daemon.status")["states"] == {"shutoff": 2}
    sim.call("domain.undefine", name="web1")
    status = sim.call("daemon.status")
    assert (status["guests"], status["states"]) == (1, {"shutoff": 1})


def test_crash_loop_goes_fatal_while_another_guest_runs(sim: Sim) -> None:
    policy = (
        "<bhyvesup:restart-backoff>0.2</bhyvesup:restart-backoff>"
        "<bhyvesup:crash-limit>3</bhyvesup:crash-limit>"
    )
    sim.define("crashy", on_crash="restart", policy=policy)
    sim.define("steady")
    steady = sim.call("domain.start", name="steady")
    sim.call("domain.start", name="crashy")
    seen_backoff = False
    for boot in range(1, 4):
        # Each crash destroys the VM, so the guest's own counter starts again: count
        # banners instead, and wait for the prompt after the latest one.
        sim.wait_for(
            f"boot {boot} of crashy at its prompt",
            lambda boot=boot: (
                (t := sim.console_text("crashy")).count("guest crashy boot") >= boot
                and t.rstrip().endswith("crashy#")
            ),
        )
        sim.type("crashy", "triple-fault")
        sim.wait_for(
            "crash handled",
            lambda boot=boot: (
                sim.info("crashy")["state"] in ("backoff", "fatal", "starting", "running")
                and sim.info("crashy")["recent_crashes"] >= boot
            ),
        )
        seen_backoff = seen_backoff or sim.info("crashy")["state"] == "backoff"
        if boot < 3:
            sim.wait_state("crashy", "running")
    info = sim.wait_state("crashy", "fatal")
    assert info["last_exit"]["code"] == 3
    assert "3 crashes" in info["reason"]
    assert seen_backoff
    # The other guest never noticed.
    other = sim.info("steady")
    assert (other["state"], other["pid"], other["boot_count"]) == (
        "running",
        steady["pid"],
        1,
    )


def test_shutdown_of_a_guest_ignoring_acpi_is_forced(sim: Sim) -> None:
    sim.define("stubborn", policy="<bhyvesup:stop-timeout>1.5</bhyvesup:stop-timeout>")
    sim.call("domain.start", name="stubborn")
    sim.wait_console("stubborn", r"stubborn# ")
    sim.type("stubborn", "ignore-acpi")
    sim.wait_console("stubborn", r"ignor")
    time.sleep(0.5)  # let the guest enable ACPI, so SIGTERM is a button press
    started = time.monotonic()
    sim.call("domain.shutdown", name="stubborn")
    info = sim.wait_state("stubborn", "shutoff", timeout=20)
    assert time.monotonic() - started >= 1.4  # it waited for the timeout...
    assert info["last_exit"]["code"] == 1  # ...then bhyvectl --force-poweroff
    sim.wait_for("/dev/vmm/stubborn destroyed", lambda: not sim.vmm("stubborn").exists())


def test_reset_restarts_the_guest(sim: Sim) -> None:
    sim.define("resetme")
    first = sim.call("domain.start", name="resetme")
    sim.wait_console("resetme", r"resetme# ")
    sim.call("domain.reset", name="resetme")
    sim.wait_for("reboot after reset", lambda: sim.info("resetme")["boot_count"] == 2)
    info = sim.wait_state("resetme", "running")
    assert info["pid"] != first["pid"]


def test_two_console_readers_see_the_same_output(sim: Sim) -> None:
    sim.define("chatty")
    sim.call("domain.start", name="chatty")
    sim.wait_console("chatty", r"chatty# ")
    readers = []
    for _ in range(2):
        c = sim.client()
        c.call("console.attach", name="chatty", mode="ro")
        readers.append(c)
    socks = [c.raw_socket() for c in readers]
    sim.type("chatty", "echo hello-from-both")
    for s, early in socks:
        s.settimeout(10)
        got = early
        while b"hello-from-both" not in got:
            chunk = s.recv(4096)
            assert chunk, "console stream ended"
            got += chunk
    for s, _ in socks:
        s.close()


def test_errors_name_the_problem(sim: Sim) -> None:
    from supervisor.errors import GuestNotFoundError, InvalidStateError, InvalidValueError

    with pytest.raises(GuestNotFoundError, match="nosuch"):
        sim.call("domain.start", name="nosuch")
    with pytest.raises(InvalidValueError):
        sim.call("domain.define", xml="<domain type='bhyve'><name>bad name</name></domain>")
    sim.define("idle")
    with pytest.raises(InvalidStateError, match="shutoff"):
        sim.call("domain.reboot", name="idle")
    # The daemon is still fine.
    assert sim.call("connect.get_type") == "BHYVE"
    assert socket.gethostname()


def test_bhyveload_guest_runs_its_loader_at_every_boot(sim: Sim) -> None:
    sim.define("bsd", bhyveload=True)
    info = sim.call("domain.start", name="bsd")
    assert info["state"] == "running", info
    sim.wait_console("bsd", r"bsd# ")
    sim.type("bsd", "reboot")
    sim.wait_for("second boot", lambda: sim.info("bsd")["boot_count"] == 2)
    sim.wait_state("bsd", "running")
    sim.wait_console("bsd", r"boot 2[\s\S]*bsd# ")
    # bhyveload ran again before the second bhyve: a reboot re-reads the kernel.
    log = (sim.root / "var/log/bhyvesupd/bsd.bhyve.log").read_text()
    runs = re.findall(r"^--- \S+ (\S+)", log, flags=re.M)
    assert [os.path.basename(r) for r in runs] == ["bhyveload", "bhyve"] * 2, log
    assert sim.console_text("bsd").count("BHYVESIM loader for bsd") == 2


def test_daemon_stop_shuts_guests_down_in_reverse_start_order(tmp_path: Path) -> None:
    root = tmp_path / "host"
    s = spawn_daemon(root, tmp_path / "daemon.out", "--no-examples")
    try:
        s.define("db", policy="<bhyvesup:start-order>1</bhyvesup:start-order>")
        s.define("app", policy="<bhyvesup:start-order>2</bhyvesup:start-order>")
        for name in ("db", "app"):
            s.call("domain.start", name=name)
            s.wait_console(name, rf"{name}# ")
    finally:
        stop_daemon(s)  # --sim stops shut the guests down
        from supervisor.vmm.sim import teardown

        teardown(str(root))
    import json

    events = [
        (e["event"], e.get("guest"))
        for e in map(
            json.loads, (root / "var/log/bhyvesupd/bhyvesupd.log").read_text().split("\n")[:-1]
        )
        if e["event"] in ("bhyve_signalled", "bhyve_exited")
    ]
    # app (order 2) is asked and gone before db (order 1) is asked.
    assert events.index(("bhyve_exited", "app")) < events.index(("bhyve_signalled", "db"))
    assert ("bhyve_exited", "db") in events


def test_autostart_launches_guests_in_start_order(tmp_path: Path) -> None:
    root = tmp_path / "host"
    names = [f"vm{i}" for i in range(6)]
    s = spawn_daemon(root, tmp_path / "daemon.out", "--no-examples")
    try:
        for i, name in enumerate(names):
            # Start order against name order: vm5 first, vm0 last.
            order = f"<bhyvesup:start-order>{len(names) - i}</bhyvesup:start-order>"
            s.define(name, policy="<bhyvesup:autostart>yes</bhyvesup:autostart>" + order)
    finally:
        stop_daemon(s)
    log = root / "var/log/bhyvesupd/bhyvesupd.log"
    log.unlink()
    s = spawn_daemon(root, tmp_path / "daemon.out", "--no-examples")
    try:
        s.wait_for(
            "every guest running",
            lambda: s.call("daemon.status")["states"] == {"running": len(names)},
        )
    finally:
        stop_daemon(s)
        from supervisor.vmm.sim import teardown

        teardown(str(root))
    import json

    started = [
        e["guest"]
        for e in map(json.loads, log.read_text().splitlines())
        if e["event"] == "guest_started"
    ]
    assert started[: len(names)] == names[::-1]


def test_sim_refuses_a_config_path_outside_the_simulated_host(tmp_path: Path) -> None:
    # A simulated host maps only FreeBSD's system trees: a run_dir elsewhere would be
    # created on the real machine.
    outside = f"/bhyvesup-test-{os.getpid()}/run"
    config = tmp_path / "bhyvesupd.toml"
    config.write_text(f'[guests]\nrun_dir = "{outside}"\n')
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor.daemon",
            "--sim",
            str(tmp_path / "host"),
            "--no-examples",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "guests.run_dir" in r.stderr
    assert outside in r.stderr
    assert not os.path.exists(os.path.dirname(outside))
