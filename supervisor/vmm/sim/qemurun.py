"""The I/O glue of the QEMU guest engine: one QEMU child per simulated bhyve.

Theory of operation
-------------------

The simulated ``bhyve`` has done bhyve's start-up against the simulated kernel (VM,
memory, devices, vCPUs). :func:`run` then replaces the scripted guest with QEMU:

1. It releases what QEMU opens itself: the console tty (QEMU opens the same nmdm A
   side) and the virtio-console sockets (QEMU listens at the same paths).
2. It serves each disk to QEMU over NBD on a socket pair (:mod:`supervisor.vmm.sim.nbd`):
   one thread per disk reads the requests and hands each read, write and flush to the
   disk's ``blk-S:F-n`` worker threads, so the host's per-thread I/O accounting (what
   ``domain.block_stats`` sums) counts the guest's disk I/O, as under bhyve.
3. It starts ``qemu-system-x86_64`` with the argv of :func:`supervisor.vmm.sim.qemu.qemu_argv`,
   QMP on one end of a socket pair, and ``PR_SET_PDEATHSIG`` so that QEMU dies with
   this process however it ends (a ``kill -9`` of bhyve kills the guest, as on FreeBSD).
4. One loop polls QMP, the kernel doorbell, the signal wake-up pipe and QEMU's pidfd:

   - ``SHUTDOWN`` (QEMU paused the machine, ``-action shutdown=pause``): the reason
     maps to bhyve's suspend reason (:func:`supervisor.vmm.sim.qmp.suspend_for`); QEMU
     is told to ``quit`` and bhyve exits with that reason's status (reset 0, poweroff 1).
     A reset whose CPU-reset log says "Triple fault" is a triple fault (exit 3): QEMU
     gives both the same reason;
   - SIGTERM: ``system_powerdown``, the ACPI power button, as bhyve does;
   - the doorbell: an NMI request becomes ``inject-nmi``; a suspend request
     (``bhyvectl --force-reset``/``--force-poweroff``) ends QEMU and exits with that
     reason's status; a destroyed VM exits as bhyve does when ``vm_run`` fails;
   - QEMU ending on its own, without a ``SHUTDOWN``: bhyve's error status 4;
   - every second, the vCPUs' registers are read (HMP ``info registers -a``): when all
     are halted with interrupts off, the guest halted for good and bhyve exits 2, as
     bhyve does when every vCPU executes ``hlt`` with interrupts disabled;
   - every second, QEMU's RTC (``qom-get /machine rtc-time``) is copied into the
     simulated kernel, so ``bhyvectl --get-rtc-time`` reads the clock the guest set;
     unless the kernel's RTC changed since the last copy (``bhyvectl --set-rtc-time``):
     then the kernel's time goes the other way, written into QEMU's MC146818 through
     HMP's ioport commands (:func:`supervisor.vmm.sim.qmp.rtc_set_commands`), and the
     copies sent before that are ignored.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any, NoReturn

from supervisor.vmm.sim import nbd, qmp
from supervisor.vmm.sim.kernel import host_local_seconds
from supervisor.vmm.sim.qemu import EngineChoice, qemu_argv, reset_log_path
from supervisor.vmm.sim.qmp import Event, QmpSession, Reply

if TYPE_CHECKING:
    from supervisor.vmm.sim.bhyve import _Bhyve, _BlockWork

_PR_SET_PDEATHSIG = 1
EXIT_ERROR = 4
#: How long QEMU gets to go after ``quit`` before it is killed.
QUIT_GRACE = 5.0
#: How often QEMU's RTC is copied into the simulated kernel (for ``--get-rtc-time``).
RTC_SYNC = 1.0


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _spawn(argv: Sequence[str], pass_fds: Sequence[int]) -> subprocess.Popen[bytes]:
    """Start QEMU so that it is killed when this process dies, however that happens.

    util-linux's ``setpriv`` sets the parent-death signal and execs QEMU (same pid);
    Python code in a forked child of this threaded process (``preexec_fn``) is the
    fallback only.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return subprocess.Popen(
            [setpriv, "--pdeathsig", "KILL", "--", *argv],
            stdin=subprocess.DEVNULL,
            pass_fds=tuple(pass_fds),
        )
    return subprocess.Popen(  # pragma: no cover - Debian always has setpriv
        list(argv), stdin=subprocess.DEVNULL, pass_fds=tuple(pass_fds), preexec_fn=_die_with_parent
    )


def _tap_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError
        buf += data
    return bytes(buf)


def _blockio(
    work: SimpleQueue[_BlockWork], fd: int, req: nbd.Request, payload: bytes
) -> tuple[int, bytes]:
    """Do one NBD request on the disk's worker threads: (wire error, read data)."""
    from supervisor.vmm.sim.bhyve import _BlockWork

    out: list[bytes] = []

    def io() -> str:
        try:
            if req.command == nbd.CMD_READ:
                data = os.pread(fd, req.length, req.offset)
                out.append(data + bytes(req.length - len(data)))  # a sparse tail reads as zeros
            elif req.command == nbd.CMD_WRITE:
                done = 0
                while done < len(payload):
                    done += os.pwrite(fd, payload[done:], req.offset + done)
                if req.flags & nbd.CMD_FLAG_FUA:
                    os.fsync(fd)
            else:
                os.fsync(fd)
        except OSError as e:
            return str(nbd.ENOSPC if e.errno == nbd.ENOSPC else nbd.EIO)
        return "0"

    item = _BlockWork(io)
    work.put(item)
    item.done.wait()
    return int(item.result or nbd.EIO), (out[0] if out else b"")


def _serve_disk(
    sock: socket.socket, fd: int, readonly: bool, work: SimpleQueue[_BlockWork]
) -> None:
    """Serve one disk to QEMU's NBD client until it disconnects or goes away."""
    try:
        size = os.fstat(fd).st_size
        sock.sendall(nbd.greeting())
        (client_flags,) = struct.unpack(">I", _recv_exact(sock, 4))
        while True:
            option, length = nbd.parse_option_header(_recv_exact(sock, 16))
            _recv_exact(sock, length)  # the export name: this server has one export
            if option in (nbd.OPT_GO, nbd.OPT_INFO):
                sock.sendall(nbd.export_info_replies(option, size, readonly))
                if option == nbd.OPT_GO:
                    break
            elif option == nbd.OPT_EXPORT_NAME:
                sock.sendall(nbd.export_name_reply(size, readonly, client_flags))
                break
            elif option == nbd.OPT_ABORT:
                sock.sendall(nbd.option_reply(option, nbd.REP_ACK))
                return
            else:
                sock.sendall(nbd.option_reply(option, nbd.REP_ERR_UNSUP))
        while True:
            req = nbd.parse_request(_recv_exact(sock, nbd.REQUEST.size))
            payload = _recv_exact(sock, req.length) if req.command == nbd.CMD_WRITE else b""
            if req.command == nbd.CMD_DISC:
                return
            error = nbd.check_request(req, size, readonly)
            data = b""
            if not error:
                error, data = _blockio(work, fd, req, payload)
            sock.sendall(nbd.simple_reply(req.handle, error) + (b"" if error else data))
    except (OSError, EOFError, nbd.NbdProtocolError):
        pass  # QEMU ended or misspoke: its disk is gone with it
    finally:
        sock.close()


def _rtc_base(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


class _Runner:
    def __init__(self, bhyve: _Bhyve, choice: EngineChoice) -> None:
        assert choice.image is not None
        assert bhyve.cmd is not None
        self.bhyve = bhyve
        self.cmd = bhyve.cmd
        self.image = choice.image
        self.session = QmpSession()
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.child_fd = child
        self.proc: subprocess.Popen[bytes] | None = None
        self.pending: dict[int, str] = {}
        self.stopping: str | None = None
        self.ready = False
        self.rtc_synced = 0.0
        self.nbd_socks: list[socket.socket] = []
        #: The kernel's RTC offset as this runner last left it; another value means
        #: bhyvectl --set-rtc-time set it.
        self.rtc_offset_seen: float | None = None
        #: A new RTC time is on its way into QEMU: QEMU's readings are stale till then.
        self.rtc_pushing = False
        #: RTC readings asked for before this command id predate the last push.
        self.rtc_valid_from = 0
        self.reset_log = reset_log_path(bhyve.host.root, bhyve.name)

    def send(
        self, name: str, arguments: dict[str, Any] | None = None, label: str | None = None
    ) -> int:
        ident, data = self.session.command(name, arguments)
        self.pending[ident] = label or name
        with contextlib.suppress(OSError):
            self.sock.sendall(data)
        return ident

    def release_devices(self) -> None:
        b = self.bhyve
        if b.console_in > 2:
            os.close(b.console_in)
        b.console_in = b.console_out = -1
        for sock in b.sockets:
            path = sock.getsockname()
            sock.close()
            with contextlib.suppress(OSError):
                if isinstance(path, str) and stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
        b.sockets = []

    def serve_disks(self) -> dict[str, int]:
        """Start an NBD server per disk; the descriptors QEMU inherits, by disk path."""
        b = self.bhyve
        if b.light:
            return {}  # no worker threads to do the I/O: QEMU opens the files itself
        fds: dict[str, int] = {}
        readonly = {
            dev.options["path"]
            for dev in self.cmd.pci_devices()
            if "ro" in dev.options and "path" in dev.options
        }
        for (path, fd), work in zip(b.disks, b.block_queues, strict=True):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.nbd_socks.append(theirs)
            fds[path] = theirs.fileno()
            threading.Thread(
                target=_serve_disk, args=(ours, fd, path in readonly, work), daemon=True
            ).start()
        return fds

    def start(self) -> None:
        b = self.bhyve
        vm = b.kernel.get(b.name)
        nbd_fds = self.serve_disks()
        plan = qemu_argv(
            self.cmd,
            image=self.image,
            resolve=b.host.path,
            memory_path=b.kernel.device_path(b.name),
            tap_exists=_tap_exists,
            qmp_fd=self.child_fd.fileno(),
            reset_log=self.reset_log,
            nbd_fds=nbd_fds,
            rtc_base=_rtc_base(b.kernel.rtc_seconds(vm)),
        )
        for note in plan.notes:
            sys.stderr.write(f"bhyve: qemu engine: {note}\n")
        self.release_devices()
        try:
            self.proc = _spawn(
                plan.argv, [self.child_fd.fileno(), *(s.fileno() for s in self.nbd_socks)]
            )
        except OSError as e:
            sys.stderr.write(f"bhyve: qemu engine: cannot run {plan.argv[0]}: {e.strerror}\n")
            b.exit(EXIT_ERROR)
        self.child_fd.close()
        for sock in self.nbd_socks:
            sock.close()
        # Power button presses reach the wake-up pipe from now on (see _Bhyve.on_signal).
        b.acpi_enabled = True

    def loop(self) -> NoReturn:
        b = self.bhyve
        assert self.proc is not None
        bell = b.kernel.open_bell(b.name)
        pidfd = os.pidfd_open(self.proc.pid)
        poller = select.poll()
        for fd in (self.sock.fileno(), bell, b.wake_r, pidfd):
            poller.register(fd, select.POLLIN)
        self.on_bell(bell)  # a request made before the doorbell existed
        while True:
            now = time.monotonic()
            if self.ready and now - self.rtc_synced >= RTC_SYNC:
                self.rtc_synced = now
                self.send("qom-get", {"path": "/machine", "property": "rtc-time"})
                self.send("human-monitor-command", {"command-line": "info registers -a"})
            for fd, _events in poller.poll(int(RTC_SYNC * 1000)):
                if fd == self.sock.fileno():
                    self.on_qmp()
                elif fd == bell:
                    self.on_bell(bell)
                elif fd == b.wake_r:
                    if b"T" in os.read(b.wake_r, 64):
                        self.send("system_powerdown")
                elif fd == pidfd:
                    self.on_qemu_gone()

    def on_qmp(self) -> None:
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.on_qemu_gone()
        for msg in self.session.feed(data):
            if isinstance(msg, qmp.Greeting):
                self.send("qmp_capabilities")
                self.send("query-cpus-fast")
            elif isinstance(msg, Reply):
                self.on_reply(msg)
            elif isinstance(msg, Event):
                self.on_event(msg)

    def on_reply(self, reply: Reply) -> None:
        name = self.pending.pop(reply.id, "")
        if not reply.ok:
            sys.stderr.write(f"bhyve: qemu engine: {name}: {reply.error}\n")
            return
        if name == "qmp_capabilities":
            self.ready = True
        elif name == "qom-get" and isinstance(reply.value, dict):
            if not self.rtc_pushing and reply.id >= self.rtc_valid_from:
                with contextlib.suppress(OSError, qmp.QmpProtocolError):
                    self.sync_rtc(qmp.rtc_seconds(reply.value))
        elif name == "rtc-reg-b" and isinstance(reply.value, str):
            with contextlib.suppress(OSError, qmp.QmpProtocolError):
                self.push_rtc(qmp.parse_port_read(reply.value))
        elif name == "human-monitor-command" and isinstance(reply.value, str):
            if qmp.halted_for_good(reply.value):
                self.finish("halt")
        elif name == "query-cpus-fast" and isinstance(reply.value, list):
            cpus = sorted(int(c["cpu-index"]) for c in reply.value if "cpu-index" in c)
            with contextlib.suppress(OSError), self.bhyve.kernel.update(self.bhyve.name) as vm:
                vm.active = cpus
                vm.debug = []

    def sync_rtc(self, qemu_seconds: int) -> None:
        """Copy QEMU's RTC into the kernel, or start telling QEMU the kernel's new time."""
        b = self.bhyve
        with b.kernel.update(b.name) as vm:
            if self.rtc_offset_seen is not None and vm.rtc_offset != self.rtc_offset_seen:
                # bhyvectl --set-rtc-time: the kernel's time is the news.
                self.rtc_offset_seen = vm.rtc_offset
                self.rtc_pushing = True
                first, read = qmp.rtc_read_reg_b()
                self.send("human-monitor-command", {"command-line": first}, label="rtc-write")
                self.send("human-monitor-command", {"command-line": read}, label="rtc-reg-b")
                return
            # The guest sets its RTC (hwclock -w) in QEMU; bhyvectl reads the kernel's.
            vm.rtc_offset = qemu_seconds - host_local_seconds()
            self.rtc_offset_seen = vm.rtc_offset

    def push_rtc(self, reg_b: int) -> None:
        """Write the kernel's RTC time into QEMU's chip, whose register B is *reg_b*."""
        b = self.bhyve
        seconds = b.kernel.rtc_seconds(b.kernel.get(b.name))
        last = 0
        for line in qmp.rtc_set_commands(seconds, reg_b):
            last = self.send("human-monitor-command", {"command-line": line}, label="rtc-write")
        self.rtc_pushing = False
        self.rtc_valid_from = last

    def on_event(self, event: Event) -> None:
        if event.name != "SHUTDOWN" or self.stopping is not None:
            return
        how = qmp.suspend_for(str(event.data.get("reason", "")))
        if how == "reset" and self.triple_faulted():
            how = "triplefault"
        self.finish(how or "poweroff")

    def triple_faulted(self) -> bool:
        try:
            with open(self.reset_log, encoding="utf-8", errors="replace") as f:
                return qmp.triple_faulted(f.read())
        except OSError:
            return False

    def on_bell(self, bell: int) -> None:
        b = self.bhyve
        try:
            nmis, how = b.take_doorbell(bell)
        except OSError:
            self.stop_qemu()
            b._destroyed()
        if how is not None and self.stopping is None:
            self.finish(how)
        for _ in nmis:
            self.send("inject-nmi")

    def finish(self, how: str) -> NoReturn:
        """The machine stopped (or must stop) for *how*: end QEMU, exit as bhyve."""
        self.stopping = how
        self.stop_qemu()
        self.bhyve._guest_suspend(how)
        raise AssertionError("unreachable")  # _guest_suspend exits

    def stop_qemu(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.send("quit")
        try:
            self.proc.wait(QUIT_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def on_qemu_gone(self) -> NoReturn:
        assert self.proc is not None
        if self.stopping is not None:
            self.bhyve._guest_suspend(self.stopping)
        # Any SHUTDOWN still unread decides the status.
        with contextlib.suppress(OSError):
            self.sock.setblocking(False)
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                for msg in self.session.feed(data):
                    if isinstance(msg, Event):
                        self.on_event(msg)
        status = self.proc.wait()
        sys.stderr.write(f"bhyve: qemu engine: qemu-system-x86_64 ended (status {status})\n")
        self.bhyve.exit(EXIT_ERROR)


def run(bhyve: _Bhyve, choice: EngineChoice) -> NoReturn:
    """Run the VM *bhyve* has set up under QEMU until it ends; never returns."""
    runner = _Runner(bhyve, choice)
    try:
        runner.start()
        runner.loop()
    except Exception:
        # An engine bug ends this bhyve with bhyve's error status, never with QEMU
        # left running behind it.
        traceback.print_exc()
        runner.stop_qemu()
        bhyve.exit(EXIT_ERROR)
