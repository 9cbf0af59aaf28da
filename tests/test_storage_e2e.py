"""End to end: disks, snapshots, jobs, 9p and the guest agent through bhyvesupctl.

The real daemon on a simulated host whose ``zfs`` is the simulated one (zvols), a
guest with a zvol disk, a 9p share and a guest-agent channel, driven by the
``bhyvesupctl`` command line as a user would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_daemon_e2e import Sim

ZVOL = "zroot/vm/web1-disk0"


def guest_xml(
    name: str, share: str, *, disk: str = f"/dev/zvol/{ZVOL}", readonly: bool = True
) -> str:
    dtype, attr = ("block", "dev") if disk.startswith("/dev/") else ("file", "file")
    return f"""<domain type='bhyve'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <os>
    <type>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/local/share/uefi-firmware/BHYVE_UEFI.fd</loader>
  </os>
  <devices>
    <disk type='{dtype}' device='disk'>
      <source {attr}='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='{share}'/>
      <target dir='share1'/>
      {"<readonly/>" if readonly else ""}
    </filesystem>
    <channel type='unix'>
      <source mode='bind' path='/var/run/bhyvesupd/{name}.qga'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <serial type='nmdm'>
      <source master='/dev/nmdm-{name}.1A' slave='/dev/nmdm-{name}.1B'/>
    </serial>
  </devices>
</domain>
"""


class Ctl:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [sys.executable, "-m", "supervisor.cli.main", "-s", self.sim.socket, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)


def start_daemon(root: Path, log: Path, *extra: str) -> Sim:
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.daemon", "--sim", str(root), "--no-examples", *extra],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    s = Sim(root, proc)
    deadline = time.monotonic() + 30
    while not os.path.exists(s.socket):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("daemon did not start:\n" + log.read_text())
        time.sleep(0.05)
    return s


def stop_daemon(s: Sim) -> None:
    from supervisor.vmm.sim import teardown

    s.proc.terminate()
    try:
        s.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        s.proc.wait()
    teardown(str(s.root))


@pytest.fixture
def zsim(tmp_path: Path) -> Iterator[Sim]:
    s = start_daemon(tmp_path / "host", tmp_path / "daemon.out")
    try:
        yield s
    finally:
        stop_daemon(s)


def zfs(sim: Sim, *args: str) -> str:
    return subprocess.run(
        [str(sim.root / "sbin/zfs"), *args], capture_output=True, text=True, check=True
    ).stdout


def test_zvol_guest_through_bhyvesupctl(zsim: Sim, tmp_path: Path) -> None:
    ctl = Ctl(zsim)
    share = tmp_path / "share"
    zfs(zsim, "create", "zroot/vm")
    zfs(zsim, "create", "-s", "-V", "64M", "-o", "volmode=dev", ZVOL)

    # 9p: a missing share directory fails the start, naming the share.
    zsim.call("domain.define", xml=guest_xml("web1", str(share)))
    r = ctl.run("start", "web1", check=False)
    assert "9p share 'share1'" in r.stdout + r.stderr
    assert "does not exist" in r.stdout + r.stderr
    assert zsim.info("web1")["state"] != "running"
    share.mkdir()
    ctl.run("clear", "web1", check=False)
    ctl.run("start", "web1")
    zsim.wait_state("web1", "running")
    zsim.wait_console("web1", r"web1# ")
    assert "<readonly/>" in zsim.call("domain.get_xml", name="web1")["xml"]
    zsim.type("web1", "9p-tags")
    zsim.wait_console("web1", r"share1 \(ro\)")

    # Block info of a zvol: volsize, and nothing written yet.
    info = ctl.json("domblkinfo", "web1", "vda")
    assert info["capacity"] == 64 << 20
    assert info["kind"] == "zvol"

    # The guest writes through its blk worker: the stats show it, and peek reads it.
    zsim.type("web1", "write-disk 8")
    zsim.wait_console("web1", r"wrote 8 KiB")
    stats = ctl.json("domblkstat", "web1", "vda")
    assert stats["threads"] == "blk-3:0"
    # Eight 1 KiB writes (the byte count is the kernel's; some sandboxes lag by one).
    assert stats["wr_req"] >= 8
    assert 7 * 1024 <= stats["wr_bytes"] <= 9 * 1024
    assert set(stats) >= {"rd_req", "rd_bytes", "wr_req", "wr_bytes"}
    out = tmp_path / "peek.bin"
    ctl.run("blockpeek", "web1", "vda", "0", str(3 << 20), "-o", str(out))
    data = out.read_bytes()
    assert len(data) == 3 << 20
    assert data.startswith(b"BHYVESIM web1 ")
    assert data[8 * 1024 :].count(0) == len(data) - 8192
    r = ctl.run("blockpeek", "web1", "vda", str(64 << 20), "1", check=False)
    assert r.returncode != 0
    assert "past the end" in r.stderr

    # The agent: ping, time, freeze (the guest's writes are refused), thaw.
    assert "alive" in ctl.run("agent", "web1", "ping").stdout
    t = ctl.json("domtime", "web1", "--agent")["seconds"]
    assert abs(t - time.time()) < 5
    assert ctl.run("domfsfreeze", "web1").stdout.strip() == "Froze 1 filesystem(s)"
    assert ctl.run("agent", "web1", "fsstatus").stdout.strip() == "frozen"
    zsim.type("web1", "write-disk 1")
    zsim.wait_console("web1", r"filesystem is frozen")
    assert ctl.run("domfsthaw", "web1").stdout.strip() == "Thawed 1 filesystem(s)"

    # A snapshot of a running guest with an agent is consistent (freeze/thaw).
    assert "consistent (frozen" in ctl.run("snapshot-create", "web1", "s1").stdout
    assert ctl.run("agent", "web1", "fsstatus").stdout.strip() == "thawed"
    snaps = ctl.json("snapshot-list", "web1")
    assert [(s["dataset"], s["name"]) for s in snaps] == [(ZVOL, "s1")]

    # Copy the running zvol (snapshot, send | receive) as a job with progress.
    r = ctl.run("blockcopy", "web1", "vda", "/dev/zvol/zroot/vm/web1-copy", "--wait")
    assert re.search(r"job 1 copy .*100\.0%", r.stdout), r.stdout
    assert "completed" in r.stdout
    copy = zsim.root / "dev/zvol/zroot/vm/web1-copy"
    assert copy.read_bytes()[:14] == b"BHYVESIM web1 "
    assert "bhyvesup-copy" not in zfs(zsim, "list", "-H", "-o", "name", "-t", "all", "-r", "zroot")

    # A paced copy cancelled midway leaves neither the new zvol nor its snapshots.
    with open(zsim.root / f"dev/zvol/{ZVOL}", "r+b") as f:
        f.seek(1 << 20)
        f.write(os.urandom(4 << 20))
    with zsim.client() as c:
        c.call("events.subscribe")
        job = c.call(
            "domain.block_copy", name="web1", disk="vda", dest="/dev/zvol/zroot/vm/c2", bandwidth=1
        )
        for note in c.notifications(timeout=20):
            if note.params.get("type") == "job.progress" and note.params["done"] > 0:
                assert note.params["total"] >= 4 << 20
                break
        assert c.call("job.cancel", id=job["id"])["state"] == "cancelled"
    left = zfs(zsim, "list", "-H", "-o", "name", "-t", "all", "-r", "zroot")
    assert "zroot/vm/c2" not in left
    assert "bhyvesup-copy" not in left

    # Revert needs the guest stopped; then the later write is gone.
    zsim.type("web1", "write-disk 32")
    zsim.wait_console("web1", r"wrote 32 KiB")
    r = ctl.run("snapshot-revert", "web1", "s1", check=False)
    assert r.returncode != 0
    assert "needs it stopped" in r.stderr
    ctl.run("destroy", "web1")
    ctl.run("snapshot-revert", "web1", "s1")
    dev = zsim.root / f"dev/zvol/{ZVOL}"
    assert dev.read_bytes()[8192 : 8192 + 8] == bytes(8)
    ctl.run("snapshot-delete", "web1", "s1")
    assert ctl.json("snapshot-list", "web1") == []

    # A zvol clone folded into its base: the definition then names the base's device.
    zfs(zsim, "snapshot", "zroot/vm/web1-copy@gold")
    zfs(zsim, "clone", "zroot/vm/web1-copy@gold", "zroot/vm/web2-disk0")
    zsim.call(
        "domain.define", xml=guest_xml("web2", str(share), disk="/dev/zvol/zroot/vm/web2-disk0")
    )
    assert "completed" in ctl.run("blockcommit", "web2", "vda", "--wait").stdout
    assert "/dev/zvol/zroot/vm/web1-copy" in zsim.call("domain.get_xml", name="web2")["xml"]
    left = zfs(zsim, "list", "-H", "-o", "name", "-t", "all", "-r", "zroot")
    assert "web2-disk0" not in left
    assert (zsim.root / "dev/zvol/zroot/vm/web1-copy").read_bytes()[:14] == b"BHYVESIM web1 "


def test_file_copy_job_progress_cancel_and_pivot(zsim: Sim, tmp_path: Path) -> None:
    ctl = Ctl(zsim)
    share = tmp_path / "share"
    share.mkdir()
    disk = tmp_path / "disk0.img"
    with open(disk, "wb") as f:
        f.truncate(128 << 20)
        for i in range(0, 128, 8):
            f.seek(i << 20)
            f.write(os.urandom(1 << 20))  # 16 MiB of data in a 128 MiB sparse file
    zsim.call("domain.define", xml=guest_xml("f1", str(share), disk=str(disk), readonly=False))
    info = ctl.json("domblkinfo", "f1", "vda")
    assert info["capacity"] == 128 << 20
    assert 16 << 20 <= info["allocation"] < 20 << 20

    # Started and cancelled: no partial copy is left.
    with zsim.client() as c:
        c.call("events.subscribe")
        job = c.call(
            "domain.block_copy", name="f1", disk="vda", dest=str(tmp_path / "c1.img"), bandwidth=4
        )
        for note in c.notifications(timeout=20):
            if note.params.get("type") == "job.progress" and note.params["done"] > 0:
                break
        cancelled = c.call("job.cancel", id=job["id"])
    assert cancelled["state"] == "cancelled"
    assert not (tmp_path / "c1.img").exists()

    # A whole copy keeps the holes, and with --pivot the guest uses it from then on.
    r = ctl.run("blockcopy", "f1", "vda", str(tmp_path / "c2.img"), "--pivot", "--wait")
    assert "completed" in r.stdout
    st = os.stat(tmp_path / "c2.img")
    assert st.st_size == 128 << 20
    assert st.st_blocks * 512 < 20 << 20
    assert (tmp_path / "c2.img").read_bytes() == disk.read_bytes()
    assert str(tmp_path / "c2.img") in zsim.call("domain.get_xml", name="f1")["xml"]
    jobs = ctl.json("job-list")
    assert [j["state"] for j in jobs] == ["cancelled", "completed"]
    assert jobs[1]["result"]["durable"] is True  # pivoted to: on disk first

    # A plain copy is left to the page cache like cp's; --sync asks for a durable one.
    r = ctl.run("blockcopy", "f1", "vda", str(tmp_path / "c4.img"), "--wait")
    assert '"durable":false' in r.stdout
    r = ctl.run("blockcopy", "f1", "vda", str(tmp_path / "c5.img"), "--sync", "--wait")
    assert '"durable":true' in r.stdout
    assert (tmp_path / "c5.img").read_bytes() == disk.read_bytes()

    # A running guest's plain file cannot be copied consistently: refused, says why.
    ctl.run("start", "f1")
    r = ctl.run("blockcopy", "f1", "vda", str(tmp_path / "c3.img"), check=False)
    assert r.returncode != 0
    assert "not in a ZFS dataset" in r.stderr
    r = ctl.run("agent", "f1", "info")
    assert "guest-fsfreeze-freeze" in r.stdout

    # A reboot through the agent: bhyve exits 0 and the supervisor starts it again.
    zsim.call("domain.reboot", name="f1", agent=True)
    zsim.wait_for("second boot", lambda: zsim.info("f1")["boot_count"] == 2)
    zsim.wait_state("f1", "running")
