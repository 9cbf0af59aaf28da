"""Tier 3: a real Linux guest under QEMU behind the simulated bhyve, driven by bhyvesupd.

One daemon (``bhyvesupd --sim ROOT --guest-engine qemu``) and one guest for the whole
module, driven with ``bhyvesupctl`` only: the guest boots to its banner, ``memory-peek``
finds its kernel's banner string in guest RAM, ``inject-nmi`` reaches its kernel,
``domfsfreeze``/``domfsthaw`` and ``domtime --agent`` go through the daemon's agent
client to qemu-ga inside it, ``reboot`` inside it restarts it, a triple fault ends it
with bhyve's status 3 (and ``on_crash`` restarts it), and ``bhyvesupctl shutdown``
presses the ACPI power button and the kernel powers off. The tests run in file order;
each still checks its own outcome from the guest's current state.

Needs qemu-system-x86_64 and the guest image (built or reused here, which downloads
the kernel package): without them these tests skip, or fail under
``BHYVESUP_REQUIRE_REAL=1``.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.vmm.sim import guestimage
from supervisor.vmm.sim.guestimage import GuestImage
from tests.conftest import require_real

pytestmark = pytest.mark.realguest

NAME = "linux1"
#: Generous: a loaded 2-core machine has been seen to take 25 s to the banner.
BOOT_TIMEOUT = 120.0

XML = f"""<domain type='bhyve'>
  <name>{NAME}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <on_crash>restart</on_crash>
  <os>
    <type>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/local/share/uefi-firmware/BHYVE_UEFI.fd</loader>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/vm/{NAME}/disk0.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='nmdm'>
      <source master='/dev/nmdm-{NAME}.1A' slave='/dev/nmdm-{NAME}.1B'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='/var/run/bhyvesupd/{NAME}.qga'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
  </devices>
</domain>
"""


class RealGuest:
    """The daemon on its simulated host, and bhyvesupctl to drive it."""

    def __init__(self, root: Path, image: GuestImage) -> None:
        self.root = root
        self.image = image
        self.socket = str(root / "var/run/bhyvesupd/bhyvesupd.sock")
        self.timings: dict[str, float] = {}

    def ctl(self, *args: str, stdin: bytes | None = None, check: bool = True) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "supervisor.cli.main", "--socket", self.socket, *args],
            input=stdin,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"bhyvesupctl {' '.join(args)}: {proc.stderr.decode()}")
        return proc.stdout.decode("utf-8", "replace")

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.ctl("dominfo", NAME, "--json"))
        return out

    def console(self) -> str:
        return self.ctl("tail", NAME, "-n", "65536")

    def wait_for(
        self, what: str, check: Callable[[], bool], timeout: float = BOOT_TIMEOUT
    ) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if check():
                return time.monotonic() - start
            time.sleep(0.25)  # each check is a bhyvesupctl process: poll gently
        raise AssertionError(f"timed out waiting for {what}; console:\n{self.console()[-3000:]}")

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.console()))

    def type(self, line: str) -> None:
        self.ctl("console", NAME, "--drain", "0.5", stdin=line.encode() + b"\r")


def _build_image() -> GuestImage:
    require_real(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64")
    try:
        image = guestimage.build()
    except guestimage.GuestImageError as e:
        require_real(False, f"the real guest image: {e}")
        raise
    return image


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealGuest]:
    image = _build_image()
    base = tmp_path_factory.mktemp("realguest")
    root = base / "host"
    log = open(base / "daemon.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supervisor.daemon",
            "--sim",
            str(root),
            "--no-examples",
            "--guest-engine",
            "qemu",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    g = RealGuest(root, image)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(g.socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("daemon did not start:\n" + (base / "daemon.out").read_text())
            time.sleep(0.05)
        disk = root / f"var/vm/{NAME}/disk0.img"
        disk.parent.mkdir(parents=True, exist_ok=True)
        with open(disk, "wb") as f:
            f.truncate(16 << 20)
        xml = base / f"{NAME}.xml"
        xml.write_text(XML)
        g.ctl("define", str(xml))
        start = time.monotonic()
        g.ctl("start", NAME)
        g.wait_for("the banner", lambda: g.count(guestimage.BANNER) >= 1)
        g.timings["boot_to_banner"] = time.monotonic() - start
        yield g
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        from supervisor.vmm.sim import teardown

        teardown(str(root))
        if g.timings:
            sys.stderr.write(f"\nreal guest timings (s): {g.timings}\n")


def test_boots_to_its_banner_on_the_console(guest: RealGuest) -> None:
    text = guest.console()
    assert f"{guestimage.BANNER}: Linux {guest.image.release}" in text
    assert guest.info()["state"] == "running"
    # The shell that init keeps on ttyS0 answers what is typed on the console.
    guest.type("echo typed-$((6*7))")
    guest.wait_for("the shell's answer", lambda: "typed-42" in guest.console(), 20)


def test_memory_peek_finds_the_kernel_banner_in_guest_ram(guest: RealGuest, tmp_path: Path) -> None:
    # The kernel's physical load address is randomised (KASLR): the guest's
    # /proc/iomem says where its read-only data (with the banner) went.
    guest.type("grep 'Kernel rodata' /proc/iomem; echo iomem-$((3*3))")
    guest.wait_for("the iomem line", lambda: "iomem-9" in guest.console(), 20)
    m = re.search(r"([0-9a-f]+)-([0-9a-f]+) : Kernel rodata", guest.console())
    assert m is not None
    start, end = int(m.group(1), 16), int(m.group(2), 16) + 1
    dump = tmp_path / "rodata.bin"
    guest.ctl(
        "memory-peek", NAME, "--start", hex(start), "--size", str(end - start), "-o", str(dump)
    )
    ram = dump.read_bytes()
    assert len(ram) == end - start
    at = ram.find(f"Linux version {guest.image.release} (".encode())
    assert at > 0, "the kernel's banner is not in guest RAM"
    # The decompressed kernel's text, not the compressed image: the whole line is there.
    assert b"gcc" in ram[at : at + 200].split(b"\n")[0]


def test_inject_nmi_reaches_the_guest_kernel(guest: RealGuest) -> None:
    before = guest.count(r"NMI received")
    out = guest.ctl("inject-nmi", NAME)
    assert out.strip() == f"{NAME}: NMI sent to vcpu 0"
    guest.wait_for("the kernel's NMI line", lambda: guest.count(r"NMI received") > before, 30)
    assert guest.info()["state"] == "running"


def test_the_agent_inside_tells_time_and_freezes_the_guests_filesystem(
    guest: RealGuest,
) -> None:
    now = json.loads(guest.ctl("domtime", NAME, "--agent", "--json"))
    # The guest's clock is the RTC the simulated bhyve gave it: UTC, as -u asks.
    assert abs(now["seconds"] - time.time()) < 120
    assert "Source: guest agent" in guest.ctl("domtime", NAME, "--agent").replace("  ", " ")
    # Give the guest a real filesystem on its virtio disk, then freeze and thaw it.
    before = json.loads(guest.ctl("domblkstat", NAME, "vda", "--json"))
    guest.type("mke2fs -q /dev/vda && mount /dev/vda /mnt && echo mounted-$((40+2))")
    guest.wait_for("the disk mounted", lambda: "mounted-42" in guest.console(), 60)
    # mke2fs wrote the filesystem through the guest's virtio disk, and bhyve's blk
    # worker threads did the writing.
    after = json.loads(guest.ctl("domblkstat", NAME, "vda", "--json"))
    assert after["wr_req"] > before["wr_req"], (before, after)
    assert after["wr_bytes"] >= before["wr_bytes"] + (64 << 10)
    assert guest.ctl("domfsfreeze", NAME).strip() == "Froze 1 filesystem(s)"
    assert guest.ctl("agent", NAME, "fsstatus").strip() == "frozen"
    assert guest.ctl("domfsthaw", NAME).strip() == "Thawed 1 filesystem(s)"
    assert guest.ctl("agent", NAME, "fsstatus").strip() == "thawed"


def test_bhyvectl_reads_the_rtc_the_guest_set(guest: RealGuest) -> None:
    guest.type("date -u -s '2031-05-06 07:08:09' >/dev/null && hwclock -w -u && echo rtc-$((1+1))")
    guest.wait_for("the guest's hwclock -w", lambda: "rtc-2" in guest.console(), 60)
    bhyvectl = guest.root / "usr/sbin/bhyvectl"

    def rtc() -> str:
        return subprocess.run(
            [str(bhyvectl), f"--vm={NAME}", "--get-rtc-time"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    guest.wait_for("bhyvectl to see 2031", lambda: "May 06 07:08" in rtc() and "2031" in rtc(), 30)
    # The other way: domtime --set (bhyvectl --set-rtc-time) reaches QEMU's chip, and
    # the guest's hwclock reads it.
    want = calendar.timegm((2029, 2, 3, 4, 5, 6))
    guest.ctl("domtime", NAME, "--set", str(want))

    def guest_rtc() -> bool:
        guest.type("hwclock -r -u")
        return re.search(r"Feb +3 04:0[5-9]:\d\d 2029", guest.console()) is not None

    guest.wait_for("the guest to read 2029 from its RTC", guest_rtc, 30)
    assert "2029" in rtc()


def test_reboot_inside_the_guest_restarts_it(guest: RealGuest) -> None:
    info = guest.info()
    boots, pid = info["boot_count"], info["pid"]
    banners = guest.count(guestimage.BANNER)
    start = time.monotonic()
    guest.type("reboot")
    guest.wait_for("the next banner", lambda: guest.count(guestimage.BANNER) > banners)
    guest.timings["reboot_to_banner"] = time.monotonic() - start
    info = guest.info()
    assert info["state"] == "running"
    assert info["boot_count"] == boots + 1
    assert info["pid"] != pid
    assert info["last_exit"]["code"] == 0
    assert "reboot: Restarting system" in guest.console()


def test_a_triple_fault_exits_3_and_on_crash_restarts_the_guest(guest: RealGuest) -> None:
    guest.wait_for("running", lambda: guest.info()["state"] == "running")
    guest.wait_for("the shell", lambda: guest.console().rstrip().endswith("guest# \x1b[6n"))
    info = guest.info()
    banners = guest.count(guestimage.BANNER)
    # Linux's "triple" reboot method loads an empty IDT and executes int3: the CPU
    # really triple-faults (see the kernel's reboot=t).
    guest.type("echo triple >/sys/kernel/reboot/type && reboot -f")
    guest.wait_for("the next banner", lambda: guest.count(guestimage.BANNER) > banners)
    after = guest.info()
    assert after["last_exit"]["code"] == 3, after
    assert after["boot_count"] == info["boot_count"] + 1
    assert after["state"] == "running"


def test_halt_inside_the_guest_exits_2(guest: RealGuest) -> None:
    guest.wait_for("running", lambda: guest.info()["state"] == "running")
    guest.wait_for("the shell", lambda: guest.console().rstrip().endswith("guest# \x1b[6n"))
    guest.type("halt")
    guest.wait_for("the halt", lambda: guest.info()["state"] != "running", 60)
    info = guest.info()
    assert info["last_exit"]["code"] == 2, info
    assert "reboot: System halted" in guest.console()


def _start_to_banner(guest: RealGuest) -> None:
    if guest.info()["state"] == "running":
        return
    banners = guest.count(guestimage.BANNER)
    guest.ctl("start", NAME)
    guest.wait_for("the banner", lambda: guest.count(guestimage.BANNER) > banners)


def test_shutdown_presses_the_power_button_and_the_kernel_powers_off(guest: RealGuest) -> None:
    _start_to_banner(guest)
    out = guest.ctl("shutdown", NAME, "--wait", "--timeout", "60")
    assert "shutoff" in out
    info = guest.info()
    assert info["state"] == "shutoff"
    assert info["last_exit"]["code"] == 1
    text = guest.console()
    assert "power button: powering off" in text
    assert "reboot: Power down" in text


def _qemu_pids(guest: RealGuest) -> list[int]:
    """QEMU processes whose guest RAM is this guest's ``/dev/vmm`` file."""
    mem = str(guest.root / f"dev/vmm/{NAME}").encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if b"qemu-system-x86_64" in cmdline and mem in cmdline:
                pids.append(int(entry))
    return pids


def test_a_forced_reset_restarts_and_a_killed_bhyve_takes_its_qemu_with_it(
    guest: RealGuest,
) -> None:
    if guest.info()["state"] != "running":
        guest.ctl("start", NAME)
    guest.wait_for("QEMU running", lambda: len(_qemu_pids(guest)) == 1, 30)
    info = guest.info()
    # bhyvectl --force-reset: bhyve exits 0 and the actor starts it again.
    guest.ctl("reset", NAME)
    guest.wait_for(
        "the restart after the reset",
        lambda: guest.info()["boot_count"] == info["boot_count"] + 1,
        60,
    )
    guest.wait_for("running", lambda: guest.info()["state"] == "running", 60)
    assert guest.info()["last_exit"]["code"] == 0
    guest.wait_for("one QEMU again", lambda: len(_qemu_pids(guest)) == 1, 30)
    os.kill(guest.info()["pid"], signal.SIGKILL)
    guest.wait_for("QEMU gone", lambda: not _qemu_pids(guest), 30)
