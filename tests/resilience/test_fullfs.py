"""The "full state filesystem" fault: the daemon's definitions, run and log directories
on a small tmpfs that fills up.

Invariants: the daemon keeps running and answering; a running guest keeps running (same
bhyve, console working); no definition is lost or cut short (writes are atomic and
whole: a short write on a nearly full filesystem must not be renamed over a good file);
clients get an error naming the file and the condition, not an internal error; and once
space returns, everything works again without a restart.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.domain.xml import parse_domain_xml
from supervisor.errors import HostNotReadyError, SupervisorError
from tests.conftest import require_real
from tests.resilience.test_faults import Rig, bhyve_pids, guest_xml

#: Where the tmpfs goes, as a FreeBSD path: under /var, so the simulated host maps it
#: inside its root (a path outside its system trees would be the real one).
STATE = "/var/state"
CONFIG = f"""\
[daemon]
log_file = "{STATE}/log/bhyvesupd.log"
[guests]
run_dir = "{STATE}/run"
log_dir = "{STATE}/log"
domains_dir = "{STATE}/domains"
"""


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def full_rig(tmp_path: Path) -> Iterator[tuple[Rig, Path]]:
    require_real(_can_mount(), "root and mount(8), to mount a small tmpfs")
    root = tmp_path / "host"
    state = root / STATE.lstrip("/")
    state.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(state)], check=True
    )
    try:
        config = tmp_path / "bhyvesupd.toml"
        config.write_text(CONFIG)
        rig = Rig(root, tmp_path / "daemon.out", config)
        rig.run_dir = STATE.lstrip("/") + "/run"
        try:
            rig.start_daemon()
            yield rig, state
        finally:
            rig.stop_daemon()
            from supervisor.vmm.sim import teardown

            teardown(str(root))
    finally:
        if subprocess.run(["umount", str(state)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(state)], check=False)


def fill(path: Path, leave: int = 0) -> None:
    """Fill the filesystem of *path* (a new file) up, then give back *leave* bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for chunk in (65536, 4096):  # then the last pages, a smaller write at a time
        try:
            while True:
                os.write(fd, b"\0" * chunk)
        except OSError:
            pass
    assert os.statvfs(path).f_bavail == 0
    if leave:
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    os.close(fd)


def described(xml: str, size: int) -> str:
    """*xml* with a ``<description>`` of *size* bytes: a definition larger than the
    space left."""
    return xml.replace("</name>", "</name>\n  <description>" + "d" * size + "</description>", 1)


def grown(xml: str) -> str:
    """*xml* with 128 MiB of memory."""
    return re.sub(r"<memory[^>]*>[^<]*</memory>", "<memory unit='MiB'>128</memory>", xml, count=1)


def expect_full(rig: Rig, method: str, **params: object) -> HostNotReadyError:
    with pytest.raises(SupervisorError) as caught:
        rig.call(method, **params)
    assert isinstance(caught.value, HostNotReadyError), repr(caught.value)
    assert "No space left on device" in str(caught.value)
    return caught.value


def echo(rig: Rig, name: str, word: str) -> bool:
    rig.type(name, f"echo {word}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = base64.b64decode(rig.call("console.tail", name=name)["data"])
        if f"\n{word}\r".encode() in data:
            return True
        time.sleep(0.05)
    return False


def test_full_state_filesystem(full_rig: tuple[Rig, Path]) -> None:
    rig, state = full_rig
    domains = state / "domains"
    rig.define("up", uefi=True)
    rig.define("down", uefi=True)
    rig.define("big", uefi=True)
    rig.call("domain.define", xml=described(rig.defined["big"]["xml"], 16384))
    rig.defined["big"] = rig.call("domain.get_xml", name="big")
    rig.ensure_running("up")
    pid = rig.info("up")["pid"]
    on_disk = {n: (domains / f"{n}.xml").read_bytes() for n in rig.defined}

    # Nearly full: a larger definition only partly fits. Written short and renamed, it
    # would replace the good one with half of the new one.
    fill(state / "filler", leave=8192)
    err = expect_full(rig, "domain.define", xml=grown(described(rig.defined["big"]["xml"], 32768)))
    assert f"{STATE}/domains/big.xml" in str(err)
    fill(state / "filler2")

    # Quite full: nothing new is written, every write fails cleanly.
    expect_full(rig, "domain.define", xml=guest_xml("new", uefi=True))
    expect_full(rig, "domain.set_autostart", name="down", autostart=True)
    names = [g["name"] for g in rig.call("domain.list")]
    assert "new" not in names
    assert rig.info("down")["autostart"] is False
    # A guest started now cannot write its runtime files: it must not run half set up,
    # and the reason says why.
    problem = ""
    try:
        rig.call("domain.start", name="down")
    except SupervisorError as exc:
        problem = str(exc)
    info = rig.info("down")
    assert info["state"] != "running", info
    assert "No space left on device" in problem + (info["reason"] or "") + (
        info["last_error"] or ""
    )
    # The host's fault, not the guest's: retried, never counted against its crash limit.
    assert info["state"] == "backoff", info
    assert info["recent_crashes"] == 0
    # The running guest is untouched and its console still works (its log cannot grow).
    assert echo(rig, "up", "still-here")
    assert rig.info("up")["pid"] == pid
    assert bhyve_pids(rig.root, "up") == [pid]
    assert {n: (domains / f"{n}.xml").read_bytes() for n in rig.defined} == on_disk
    assert not [p for p in os.listdir(domains) if not p.endswith(".xml")]

    # A daemon killed and restarted while the filesystem is full loses nothing either.
    rig.kill_daemon()
    rig.start_daemon()
    assert rig.info("up")["state"] == "running"
    assert rig.info("up")["pid"] == pid
    for name, xml in rig.defined.items():
        assert rig.call("domain.get_xml", name=name) == xml
        parse_domain_xml((domains / f"{name}.xml").read_bytes())

    # Space returns: everything works again, without a restart.
    log = state / "log/bhyvesupd.log"
    logged = log.stat().st_size
    os.unlink(state / "filler")
    os.unlink(state / "filler2")
    rig.define("new", uefi=True)
    rig.call("domain.set_autostart", name="down", autostart=True)
    redefined = grown(described(rig.defined["big"]["xml"], 32768))
    rig.call("domain.define", xml=redefined)
    assert rig.info("big")["memory_kib"] == 128 * 1024
    rig.defined["big"] = rig.call("domain.get_xml", name="big")
    rig.defined["down"] = rig.call("domain.get_xml", name="down")
    # The start that failed for want of space was asked of the daemon killed since; its
    # successor, which could not read a status about it, knows nothing of it.
    if rig.info("down")["state"] == "shutoff":
        rig.ensure_running("down")
    rig.settle("down", lambda i: i["state"] == "running", "running once space returned")
    assert rig.info("down")["recent_crashes"] == 0
    assert echo(rig, "up", "and-back")
    rig.check(list(rig.defined))
    assert not rig.violations, rig.violations
    assert log.stat().st_size > logged
    # A log record that does not fit is reported once per outage, never with a
    # traceback per record (tests/test_log.py checks the reports themselves).
    assert "Logging error" not in rig.out.read_text()


def test_a_start_the_full_disk_refused_comes_back_by_itself(
    full_rig: tuple[Rig, Path],
) -> None:
    rig, state = full_rig
    rig.define("down", uefi=True)
    fill(state / "filler")
    try:
        rig.call("domain.start", name="down")
    except SupervisorError:
        pass
    deadline = time.monotonic() + 20
    while (info := rig.info("down"))["state"] != "backoff" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert info["state"] == "backoff", info
    assert info["restart_in"] is not None
    assert "No space left on device" in info["reason"]
    assert info["recent_crashes"] == 0
    assert not bhyve_pids(rig.root, "down")  # nothing runs half set up
    os.unlink(state / "filler")
    rig.settle("down", lambda i: i["state"] == "running", "running once space returned")
    assert rig.info("down")["recent_crashes"] == 0
    rig.check(["down"])
    assert not rig.violations, rig.violations
