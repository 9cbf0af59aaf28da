"""Random faults against the real daemon on the simulated host, checked against invariants.

Faults: ``kill -9`` of bhyve, every way a guest ends bhyve (reboot → 0, poweroff → 1,
halt → 2, triple fault → 3, abort → SIGABRT), loader failures (the boot disk vanishes
under bhyveload), clients that drop mid-call (half a request, a call then a hang-up, a
console attachment closed at once), and ``kill -9`` of the daemon followed by a restart,
with one guest's bhyve killed while no daemon watches. (The full state filesystem is in
``test_fullfs.py``.)

Invariants, checked after every fault:

- the daemon never dies and keeps answering;
- every guest reaches a stable state (running, shutoff, crashed) within a bound, and the
  state each fault must lead to;
- definitions are intact: each guest's XML is what was defined;
- nothing is left behind: a guest that is not running has no /dev/vmm entry, no pid file
  and no bhyve process; a running one has exactly one bhyve, named in its pid file;
- across a ``kill -9`` of the daemon, every running guest is adopted as it was (running,
  the same bhyve pid, its console reopened: it echoes what is typed), and a guest whose
  bhyve died meanwhile leaves nothing (VM, pid file, socket, tap, tap table entry).

The bounded run (CI) injects a few dozen faults; ``--resilience-long`` (or
``BHYVESUP_RESILIENCE_LONG=N`` for N faults) runs the long mode. The seed is printed, and
``BHYVESUP_RESILIENCE_SEED`` replays a run.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.errors import SupervisorError
from supervisor.rpc.client import Client
from supervisor.vmm.sim import ifconfig, procs

NS = "urn:bhyve-supervisor:domain:1"
#: Seconds a guest may take to settle after a fault.
SETTLE = 20.0
#: Seconds the clean-up after a final stop may take.
CLEANUP = 15.0
STABLE = ("running", "shutoff", "crashed")
POLICY = (
    "<bhyvesup:restart-backoff>0.05</bhyvesup:restart-backoff>"
    "<bhyvesup:restart-backoff-max>0.2</bhyvesup:restart-backoff-max>"
    "<bhyvesup:crash-limit>1000</bhyvesup:crash-limit>"
    "<bhyvesup:crash-window>1</bhyvesup:crash-window>"
)


def guest_xml(name: str, *, uefi: bool, devices: str = "") -> str:
    loader = (
        "<loader readonly='yes' type='pflash'>/usr/local/share/uefi-firmware/BHYVE_UEFI.fd</loader>"
        if uefi
        else ""
    )
    # A loader guest does not restart by itself after a crash: a loader failure leaves
    # it crashed, a state it must reach and stay in.
    on_crash = "restart" if uefi else "destroy"
    return f"""<domain type='bhyve'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type>{loader}</os>
  <on_crash>{on_crash}</on_crash>
  <metadata><bhyvesup:policy xmlns:bhyvesup='{NS}'>{POLICY}</bhyvesup:policy></metadata>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/vm/{name}/disk0.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>{devices}
    <serial type='nmdm'>
      <source master='/dev/nmdm-{name}.1A' slave='/dev/nmdm-{name}.1B'/>
    </serial>
  </devices>
</domain>
"""


class Rig:
    """The daemon on a simulated host, with the checks the invariants need."""

    def __init__(self, root: Path, out: Path, config: Path | None = None) -> None:
        self.root = root
        self.out = out
        self.config = config
        #: The run_dir of the daemon's configuration, relative to the host's root.
        self.run_dir = "var/run/bhyvesupd"
        self.socket = str(root / "var/run/bhyvesupd/bhyvesupd.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.defined: dict[str, Any] = {}
        self.violations: list[str] = []

    # -- the daemon ------------------------------------------------------------------

    def start_daemon(self) -> None:
        with open(self.out, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "supervisor.daemon",
                    "--sim",
                    str(self.root),
                    "--no-examples",
                    *(["--config", str(self.config)] if self.config else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.call("connect.is_alive") is True:
                    return
            except SupervisorError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("daemon did not start:\n" + self.out.read_text()[-3000:])
            time.sleep(0.05)

    def kill_daemon(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop_daemon(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def call(self, method: str, **params: Any) -> Any:
        with Client(self.socket, timeout=30.0) as c:
            return c.call(method, **params)

    def info(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.call("domain.get_info", name=name)
        return info

    # -- guests ----------------------------------------------------------------------

    def define(self, name: str, *, uefi: bool, devices: str = "") -> None:
        disk = self.root / f"var/vm/{name}/disk0.img"
        disk.parent.mkdir(parents=True, exist_ok=True)
        with open(disk, "wb") as f:
            f.truncate(16 << 20)
        xml = guest_xml(name, uefi=uefi, devices=devices)
        self.call("domain.define", xml=xml)
        self.defined[name] = self.call("domain.get_xml", name=name)

    def settle(self, name: str, expect: Callable[[dict[str, Any]], bool], what: str) -> None:
        """Invariant: *name* reaches a stable state that satisfies *expect* in time."""
        deadline = time.monotonic() + SETTLE
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            info = self.info(name)
            if info["state"] in STABLE and expect(info):
                return
            time.sleep(0.05)
        self.violations.append(f"{name}: not {what} within {SETTLE} s: {info}")

    def type(self, name: str, line: str) -> None:
        with Client(self.socket, timeout=30.0) as c:
            c.call("console.attach", name=name, mode="rw")
            raw, _ = c.raw_socket()
            with raw:
                raw.sendall(line.encode() + b"\r")
                time.sleep(0.1)

    def mark(self, name: str) -> int:
        """How many console bytes *name* has printed so far."""
        total: int = self.call("console.tail", name=name, bytes=0)["total"]
        return total

    def wait_booted(self, name: str, mark: int) -> None:
        """Wait for a boot banner and then the prompt after console offset *mark*: the
        scripted guest reads its console only once booted."""
        import base64

        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:
            out = self.call("console.tail", name=name)
            data = base64.b64decode(out["data"])
            new = data[max(0, len(data) - (out["total"] - mark)) :]
            if f"{name}# ".encode() in new.rpartition(b" boot ")[2] and b" boot " in new:
                return
            time.sleep(0.05)
        self.violations.append(f"{name}: no boot banner and prompt after offset {mark}")

    def ensure_running(self, name: str) -> None:
        info = self.info(name)
        if info["state"] == "running":
            return
        mark = self.mark(name)
        if info["state"] == "crashed":
            self.call("domain.clear", name=name)
        self.call("domain.start", name=name)
        self.settle(name, lambda i: i["state"] == "running", "running")
        self.wait_booted(name, mark)

    # -- invariants --------------------------------------------------------------------

    def check(self, names: list[str]) -> None:
        """Every invariant; leftovers get :data:`CLEANUP` seconds to go (the state is
        published before the clean-up, which runs next, in order)."""
        deadline = time.monotonic() + CLEANUP
        while True:
            found = self._check_once(names)
            if not found or time.monotonic() > deadline:
                self.violations += found
                return
            time.sleep(0.05)

    def _check_once(self, names: list[str]) -> list[str]:
        found: list[str] = []
        assert self.proc is not None
        if self.proc.poll() is not None:
            found.append(f"daemon died (status {self.proc.returncode})")
            return found
        try:
            assert self.call("connect.is_alive") is True
        except (SupervisorError, AssertionError) as exc:
            found.append(f"daemon does not answer: {exc!r}")
            return found
        for name in names:
            if self.call("domain.get_xml", name=name) != self.defined[name]:
                found.append(f"{name}: definition changed")
            info = self.info(name)
            pidfile = self.root / self.run_dir / f"{name}.pid"
            vmm = self.root / f"dev/vmm/{name}"
            bhyves = bhyve_pids(self.root, name)
            if info["state"] == "running":
                if bhyves != [info["pid"]]:
                    found.append(
                        f"{name}: running as {info['pid']}, bhyves "
                        + ", ".join(describe_process(p) for p in bhyves)
                    )
                if not pidfile.exists() or int(pidfile.read_text()) != info["pid"]:
                    found.append(f"{name}: pid file does not name {info['pid']}")
            elif info["state"] in ("shutoff", "crashed"):
                left = [str(p) for p in (pidfile, vmm) if p.exists()]
                if bhyves:
                    left.append(f"bhyve {bhyves}")
                if left:
                    found.append(f"{name}: {info['state']} but left {left}")
        return found


def bhyve_pids(root: Path, name: str) -> list[int]:
    """Live simulated bhyve processes of *name* on the host at *root*: by their title,
    as ps shows it, among the processes that host registered. (Other suites on the
    same machine run guests of the same names on hosts of their own.)"""
    mine = set(procs.live(str(root)))
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if cmd.rstrip(b"\0") == f"bhyve: {name}".encode() and state != "Z" and int(entry) in mine:
            out.append(int(entry))
    return sorted(out)


def describe_process(pid: int) -> str:
    """*pid* with what /proc says of it (state, parent, threads), for a report."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} (state {fields[0]}, ppid {fields[1]}, threads {fields[17]})"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "host", tmp_path / "daemon.out")
    r.start_daemon()
    try:
        yield r
    finally:
        r.stop_daemon()
        from supervisor.vmm.sim import teardown

        teardown(str(r.root))


# -- faults ------------------------------------------------------------------------------


def fault_exit(rig: Rig, name: str, command: str) -> None:
    before = rig.info(name)
    mark = rig.mark(name)
    rig.type(name, command)
    if command == "reboot":
        rig.settle(
            name,
            lambda i: i["state"] == "running" and i["boot_count"] > before["boot_count"],
            "rebooted",
        )
    elif command in ("poweroff", "halt"):
        code = 1 if command == "poweroff" else 2
        rig.settle(
            name,
            lambda i: i["state"] == "shutoff" and (i["last_exit"] or {}).get("code") == code,
            f"shut off with exit {code}",
        )
    else:  # triple fault (exit 3) or abort (SIGABRT): a crash, restarted by policy
        rig.settle(
            name,
            lambda i: i["state"] == "running" and i["pid"] != before["pid"],
            f"restarted after {command}",
        )
    if rig.info(name)["state"] == "running":
        rig.wait_booted(name, mark)


def fault_kill9(rig: Rig, name: str) -> None:
    before = rig.info(name)
    mark = rig.mark(name)
    os.kill(before["pid"], signal.SIGKILL)
    rig.settle(
        name,
        lambda i: i["state"] == "running" and i["pid"] != before["pid"],
        "restarted after kill -9",
    )
    rig.wait_booted(name, mark)


def fault_loader(rig: Rig, name: str) -> None:
    """The boot disk vanishes: bhyveload fails, the guest is crashed, nothing left."""
    if rig.info(name)["state"] == "running":
        rig.call("domain.destroy", name=name)
        rig.settle(name, lambda i: i["state"] == "shutoff", "destroyed")
    disk = rig.root / f"var/vm/{name}/disk0.img"
    aside = disk.with_suffix(".aside")
    disk.rename(aside)
    try:
        try:
            rig.call("domain.start", name=name)
        except SupervisorError:
            pass  # a start that fails at once is a proper answer too
        rig.settle(
            name,
            lambda i: i["state"] == "crashed" and "failed" in (i["reason"] or ""),
            "crashed by its loader",
        )
    finally:
        aside.rename(disk)


def fault_client_drop(rig: Rig, name: str, how: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(rig.socket)
    if how == "half-request":
        s.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "domain.get_in')
    elif how == "call-then-hangup":
        s.sendall(
            b'{"jsonrpc": "2.0", "id": 1, "method": "domain.list", "params": {}}\n'
            b'{"jsonrpc": "2.0", "id": 2, "method": "domain.get_info", '
            b'"params": {"name": "' + name.encode() + b'"}}\n'
        )
    elif how == "console-attach":
        s.sendall(
            b'{"jsonrpc": "2.0", "id": 1, "method": "console.attach", '
            b'"params": {"name": "' + name.encode() + b'", "mode": "rw"}}\n'
        )
    s.close()


FAULTS = (
    "reboot",
    "poweroff",
    "halt",
    "triple-fault",
    "abort",
    "kill-9",
    "loader",
    "half-request",
    "call-then-hangup",
    "console-attach",
)


def inject(rig: Rig, fault: str, uefi: list[str], loaded: list[str], rnd: random.Random) -> str:
    if fault == "loader":
        name = rnd.choice(loaded)
        fault_loader(rig, name)
        return name
    name = rnd.choice(uefi + loaded if fault in ("kill-9", "reboot") else uefi)
    if fault in ("half-request", "call-then-hangup", "console-attach"):
        fault_client_drop(rig, name, fault)
        return name
    rig.ensure_running(name)
    if fault == "kill-9":
        fault_kill9(rig, name) if name in uefi else _kill_loaded(rig, name)
    else:
        fault_exit(rig, name, fault)
    return name


def _kill_loaded(rig: Rig, name: str) -> None:
    # A loader guest has on_crash=destroy: kill -9 leaves it crashed, and clean.
    os.kill(rig.info(name)["pid"], signal.SIGKILL)
    rig.settle(name, lambda i: i["state"] == "crashed", "crashed after kill -9")


#: A guest with what a stop must release besides the VM and the pid file: a tap on a
#: bridge and a virtio-console socket. It takes no part in the random faults.
NETGUEST = "n1"


def net_devices(rig: Rig, name: str) -> str:
    return (
        "\n    <interface type='bridge'><source bridge='bridge0'/>"
        "<model type='virtio'/></interface>"
        f"\n    <channel type='unix'><source mode='bind' path='/{rig.run_dir}/{name}.port'/>"
        "<target type='virtio' name='org.example.port.0'/></channel>"
    )


def leftovers(rig: Rig, name: str) -> list[str]:
    """What a guest that is not running must not leave behind: its VM, pid file,
    sockets, taps (on the host and in the daemon's tap table) and bhyve processes."""
    left = [
        str(p)
        for p in (
            rig.root / f"dev/vmm/{name}",
            rig.root / rig.run_dir / f"{name}.pid",
            rig.root / rig.run_dir / f"{name}.port",
        )
        if os.path.lexists(p)
    ]
    left += [f"tap {tap}" for tap in guest_taps(rig, name)]
    table = rig.root / rig.run_dir / "taps.json"
    if table.exists() and name in json.loads(table.read_text()):
        left.append(f"{name} in {table.name}")
    if bhyve_pids(rig.root, name):
        left.append(f"bhyve {bhyve_pids(rig.root, name)}")
    return left


def guest_taps(rig: Rig, name: str) -> list[str]:
    """The simulated host's taps whose description says the daemon made them for *name*."""
    return [
        ifname
        for ifname, info in ifconfig.interfaces(str(rig.root)).items()
        if (info.get("description") or "").startswith(f"bhyvesupd guest {name} ")
    ]


def console_answers(rig: Rig, name: str, word: str) -> bool:
    """Whether *name*'s console, attached through the daemon, echoes *word* back."""
    rig.type(name, f"echo {word}")
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        data = base64.b64decode(rig.call("console.tail", name=name)["data"])
        if f"\n{word}\r".encode() in data:
            return True
        time.sleep(0.05)
    return False


def daemon_kill9(rig: Rig, guests: list[str], injected: Counter[str]) -> None:
    """``kill -9`` of the daemon with every guest running; while no daemon watches,
    the network guest's bhyve is killed too. The next daemon must adopt each survivor
    as it is (running, same pid, console reopened) and leave nothing of the dead one.
    """
    for name in [*guests, NETGUEST]:
        rig.ensure_running(name)
    running = {n: rig.info(n)["pid"] for n in guests}
    dead = rig.info(NETGUEST)["pid"]
    taps = guest_taps(rig, NETGUEST)
    if not taps or not (rig.root / rig.run_dir / f"{NETGUEST}.port").exists():
        rig.violations.append(f"{NETGUEST}: running without its tap or socket: taps {taps}")
    rig.kill_daemon()
    injected["daemon-kill-9"] += 1
    os.kill(dead, signal.SIGKILL)
    injected["bhyve-kill-9-unwatched"] += 1
    deadline = time.monotonic() + SETTLE
    while bhyve_pids(rig.root, NETGUEST) and time.monotonic() < deadline:
        time.sleep(0.05)
    for name, pid in running.items():
        if bhyve_pids(rig.root, name) != [pid]:
            rig.violations.append(f"{name}: bhyve {pid} did not outlive the daemon")
    rig.start_daemon()
    for name, pid in running.items():
        info = rig.info(name)
        if info["state"] != "running" or info["pid"] != pid:
            rig.violations.append(
                f"{name}: not adopted as running with pid {pid}: {info['state']} {info['pid']}"
            )
        elif not console_answers(rig, name, f"adopted-{name}"):
            rig.violations.append(f"{name}: console not reopened after the daemon restart")
    info = rig.info(NETGUEST)
    if info["state"] == "running":
        rig.violations.append(f"{NETGUEST}: running after its bhyve died unwatched: {info}")
    else:
        deadline = time.monotonic() + CLEANUP
        while (left := leftovers(rig, NETGUEST)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if left:
            rig.violations.append(f"{NETGUEST}: {info['state']}, died unwatched, left {left}")
    rig.check([*guests, NETGUEST])


def fault_count(config: pytest.Config) -> int:
    env = os.environ.get("BHYVESUP_RESILIENCE_LONG")
    if env:
        return int(env) if env.isdigit() and int(env) > 1 else 400
    if config.getoption("--resilience-long", default=False):
        return 400
    return 24


def test_random_faults_keep_the_invariants(rig: Rig, pytestconfig: pytest.Config) -> None:
    seed = int(os.environ.get("BHYVESUP_RESILIENCE_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    count = fault_count(pytestconfig)
    uefi = ["u1", "u2"]
    loaded = ["l1"]
    for name in uefi:
        rig.define(name, uefi=True)
    for name in loaded:
        rig.define(name, uefi=False)
    rig.define(NETGUEST, uefi=True, devices=net_devices(rig, NETGUEST))
    names = uefi + loaded
    for name in names:
        rig.ensure_running(name)
    injected: Counter[str] = Counter()
    for _ in range(count):
        # Every kind of fault comes up in the bounded run too: go round them, shuffled.
        if not injected or sum(injected.values()) % len(FAULTS) == 0:
            order = list(FAULTS)
            rnd.shuffle(order)
        fault = order[sum(injected.values()) % len(FAULTS)]
        inject(rig, fault, uefi, loaded, rnd)
        injected[fault] += 1
        rig.check(names)
        if rig.violations:
            break

    daemon_kill9(rig, uefi + loaded, injected)
    names.append(NETGUEST)

    report = (
        f"resilience: seed={seed} guests={len(names)} faults={sum(injected.values())} "
        f"({dict(sorted(injected.items()))}) violations={len(rig.violations)}"
    )
    print(report)
    assert not rig.violations, report + "\n" + "\n".join(rig.violations)
