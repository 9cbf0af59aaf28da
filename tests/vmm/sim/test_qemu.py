"""The QEMU engine's mapping of a bhyve command line (golden), and QEMU accepting it."""

from __future__ import annotations

import os
import pty
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from supervisor.vmm.bhyveopts import parse_bhyve_argv
from supervisor.vmm.sim import qemu
from supervisor.vmm.sim.guestimage import GuestImage
from supervisor.vmm.sim.qemu import EngineChoice, qemu_argv
from supervisor.vmm.sim.qmp import Greeting, QmpSession, Reply
from tests.conftest import require_real

BHYVE = [
    "bhyve", "-c", "2", "-m", "256M", "-A", "-H", "-P", "-u",
    "-s", "0,hostbridge", "-s", "1,lpc",
    "-s", "2,virtio-blk,/var/vm/g1/disk.img",
    "-s", "3,virtio-net,tap0,mac=52:54:00:00:00:01",
    "-s", "4,ahci,hd:/a.img,cd:/b.iso",
    "-s", "5,nvme,/c.img,ser=S1",
    "-s", "6,virtio-console,org.qemu.guest_agent.0=/var/run/bhyvesupd/g.agent",
    "-s", "7,virtio-rnd",
    "-s", "8,virtio-net,tap9",
    "-s", "9,fbuf,tcp=0.0.0.0:5900",
    "-l", "com1,/dev/nmdm0A",
    "-l", "bootrom,/usr/local/share/uefi-firmware/BHYVE_UEFI.fd",
    "g1",
]  # fmt: skip

GOLDEN = [
    "qemu-system-x86_64",
    "-name", "guest=g1",
    "-machine", "q35,accel=tcg,max-ram-below-4g=3G,memory-backend=ram0",
    "-object", "memory-backend-file,id=ram0,size=268435456,mem-path=/sim,,x/dev/vmm/g1,share=on",
    "-m", "256M",
    "-smp", "2,sockets=2,cores=1,threads=1",
    "-nodefaults", "-no-user-config",
    "-display", "none",
    "-action", "reboot=shutdown,shutdown=pause",
    "-chardev", "socket,id=qmp,fd=7,server=off",
    "-mon", "chardev=qmp,mode=control",
    "-d", "cpu_reset", "-D", "/sim/.simhost/g1.qemu-reset.log",
    "-rtc", "base=utc",
    "-kernel", "/cache/vmlinuz",
    "-initrd", "/cache/initrd.img",
    "-append", "console=ttyS0",
    "-chardev", "serial,id=com1,path=/sim/dev/nmdm0A",
    "-device", "isa-serial,chardev=com1,index=0",
    "-drive", "file=/sim/var/vm/g1/disk.img,format=raw,if=none,id=ds2f0,cache=writeback",
    "-device", "virtio-blk-pci,drive=ds2f0,id=s2f0",
    "-netdev", "tap,id=ns3f0,ifname=tap0,script=no,downscript=no",
    "-device", "virtio-net-pci,id=s3f0,mac=52:54:00:00:00:01,netdev=ns3f0",
    "-device", "ahci,id=s4f0",
    "-drive", "file=/sim/a.img,format=raw,if=none,id=ds4f0p0,cache=writeback",
    "-device", "ide-hd,drive=ds4f0p0,bus=s4f0.0",
    "-drive", "file=/sim/b.iso,format=raw,if=none,id=ds4f0p1,cache=writeback,readonly=on",
    "-device", "ide-cd,drive=ds4f0p1,bus=s4f0.1",
    "-drive", "file=/sim/c.img,format=raw,if=none,id=ds5f0,cache=writeback",
    "-device", "nvme,drive=ds5f0,serial=S1,id=s5f0",
    "-device", "virtio-serial-pci,id=s6f0",
    "-chardev", "socket,id=cs6f0p0,path=/sim/var/run/bhyvesupd/g.agent,server=on,wait=off",
    "-device", "virtserialport,bus=s6f0.0,chardev=cs6f0p0,name=org.qemu.guest_agent.0",
    "-device", "virtio-rng-pci,id=s7f0",
    "-device", "virtio-net-pci,id=s8f0",
]  # fmt: skip

IMAGE = GuestImage("/cache/vmlinuz", "/cache/initrd.img", "6.1", "console=ttyS0", "k")


def _plan(resolve_root: str = "/sim", memory_path: str = "/sim,x/dev/vmm/g1") -> qemu.QemuPlan:
    return qemu_argv(
        parse_bhyve_argv(BHYVE),
        image=IMAGE,
        resolve=lambda p: resolve_root + p,
        memory_path=memory_path,
        tap_exists=lambda n: n == "tap0",
        qmp_fd=7,
        reset_log="/sim/.simhost/g1.qemu-reset.log",
    )


def test_a_bhyve_command_line_maps_onto_qemu_device_by_device() -> None:
    plan = _plan()
    assert list(plan.argv) == GOLDEN
    assert plan.notes == (
        "bootrom /usr/local/share/uefi-firmware/BHYVE_UEFI.fd: not used, "
        "the guest image's kernel boots directly",
        "0:8:0: virtio-net backend tap9: no such interface on this host, the NIC has no link",
        "0:9:0: fbuf: not emulated by the QEMU engine, left out",
    )


def test_localtime_rtc_and_an_explicit_rtc_start() -> None:
    cmd = parse_bhyve_argv(["bhyve", "-m", "128M", "-s", "31,lpc", "g2"])

    def plan(rtc_base: str | None) -> tuple[str, ...]:
        return qemu_argv(
            cmd,
            image=IMAGE,
            resolve=str,
            memory_path="/m",
            tap_exists=bool,
            qmp_fd=3,
            reset_log="/l",
            rtc_base=rtc_base,
        ).argv

    argv = plan(None)
    assert argv[argv.index("-rtc") + 1] == "base=localtime"
    argv = plan("2030-01-02T03:04:05")
    assert argv[argv.index("-rtc") + 1] == "base=2030-01-02T03:04:05"


def test_the_engine_choice_is_kept_per_host(tmp_path: Path) -> None:
    assert qemu.load_engine(str(tmp_path)) == EngineChoice()
    qemu.save_engine(str(tmp_path), EngineChoice("qemu", IMAGE))
    assert qemu.load_engine(str(tmp_path)) == EngineChoice("qemu", IMAGE)
    with pytest.raises(ValueError, match="guest_engine: 'qemu' needs a guest image"):
        qemu.save_engine(str(tmp_path), EngineChoice("qemu"))
    with pytest.raises(ValueError, match="guest_engine: must be one of"):
        qemu.save_engine(str(tmp_path), EngineChoice("kvm"))


def test_real_qemu_accepts_the_mapped_command_line(tmp_path: Path) -> None:
    """Every option spelling is checked by QEMU itself: it starts, answers QMP, quits."""
    require_real(shutil.which(qemu.QEMU) is not None, "qemu-system-x86_64 (qemu-system-x86)")
    sim = tmp_path / "s"
    for rel, size in (
        ("var/vm/g1/disk.img", 1 << 20),
        ("a.img", 1 << 20),
        ("b.iso", 1 << 20),
        ("c.img", 1 << 20),
    ):
        (sim / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(sim / rel, "wb") as f:
            f.truncate(size)
    (sim / "var/run/bhyvesupd").mkdir(parents=True)
    (sim / "dev/vmm").mkdir(parents=True)
    master, slave = pty.openpty()
    os.symlink(os.ttyname(slave), sim / "dev/nmdm0A")
    mem = sim / "dev/vmm/g1"
    with open(mem, "wb") as f:
        f.truncate(256 << 20)
    ours, theirs = socket.socketpair()
    plan = qemu_argv(
        parse_bhyve_argv(BHYVE),
        image=GuestImage(str(tmp_path / "vmlinuz"), str(tmp_path / "initrd.img"), "", "", ""),
        resolve=lambda p: str(sim) + p,
        memory_path=str(mem),
        tap_exists=lambda n: False,
        qmp_fd=theirs.fileno(),
        reset_log=str(tmp_path / "reset.log"),
    )
    # -S: build the machine (every device and backend) but run no guest code. The
    # kernel options go: QEMU would load the (empty) kernel before anything else.
    argv = list(plan.argv)
    k = argv.index("-kernel")
    del argv[k : k + 6]
    proc = subprocess.Popen([*argv, "-S"], pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE)
    theirs.close()
    try:
        ours.settimeout(30)
        session = QmpSession()
        msgs: list[object] = []
        ident, wire = session.command("qmp_capabilities")
        while not any(isinstance(m, Reply) and m.id == ident for m in msgs):
            try:
                data = ours.recv(65536)
            except ConnectionResetError:
                data = b""
            assert data, proc.communicate(timeout=10)[1].decode()
            for m in session.feed(data):
                msgs.append(m)
                if isinstance(m, Greeting):
                    ours.sendall(wire)
        assert os.path.exists(sim / "var/run/bhyvesupd/g.agent")  # QEMU listens there
        ours.sendall(session.command("quit")[1])
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        ours.close()
        os.close(master)
        os.close(slave)


def test_install_records_the_engine_and_scripted_stays_the_default(tmp_path: Path) -> None:
    from supervisor.vmm.sim import install

    root = str(tmp_path / "host")
    install(root)
    assert qemu.load_engine(root) == EngineChoice("scripted")
    install(root, guest_engine="qemu", guest_image=IMAGE)
    assert qemu.load_engine(root) == EngineChoice("qemu", IMAGE)
    install(root)  # installing again without the flag goes back to the scripted guest
    assert qemu.load_engine(root).engine == "scripted"


def test_bhyvesupd_names_what_the_guest_image_lacks(tmp_path: Path) -> None:
    import sys

    env = {**os.environ, "PATH": str(tmp_path / "empty"), "BHYVESUP_GUEST_CACHE": str(tmp_path)}
    argv = [sys.executable, "-m", "supervisor.daemon", "--sim", str(tmp_path / "h")]
    proc = subprocess.run(
        [*argv, "--no-examples", "--guest-engine", "qemu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "bhyvesupd: guest image: apt-get is not installed (Debian package apt)" in proc.stderr
