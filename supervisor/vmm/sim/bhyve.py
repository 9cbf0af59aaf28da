"""The simulated bhyve(8): FreeBSD's start-up checks, exit codes and process shape.

The command line is read by :func:`supervisor.vmm.bhyveopts.parse_bhyve_argv`, the
same parser the supervisor uses, so what real bhyve refuses is refused here with the
same status and message. Start-up then follows bhyve's ``main()`` step by step against
the simulated kernel (:mod:`supervisor.vmm.sim.kernel`)::

    open the VM        15.x: REINIT with a bootrom (create if missing), else it must
                       exist; 14.x: vm_create() first, "cannot be booted" without ROM
    topology           vm_set_topology, vCPUs allowed (1 without unrestricted guest)
    memory             vm_setup_memory (EINVAL if the VM has RAM of another size)
    platform           the 16 MiB bootrom segment; ROM boot needs unrestricted guest
    PCI devices        in bus/slot/function order: block backends are opened, lpc
                       loads the ROM and opens the COM backends (ttys only)
    vCPUs              all activated at once, the APs parked in the debug set
    process title      ``bhyve: NAME``, only now (ps shows the argv until then)

Then the scripted guest (:mod:`supervisor.vmm.sim.guest`) runs on com1, or, on a
host set up with the QEMU engine, a real Linux under QEMU
(:mod:`supervisor.vmm.sim.qemurun`). The process
has FreeBSD bhyve's threads, named as ``pthread_set_name_np()`` names them (``vcpu N``,
``mevent``, ``blk-S:F-n``), all idle once booted: the event loop sleeps in ``poll``
on the console, the kernel doorbell and a wake-up pipe.

One knob exists for tests, in a form real bhyve accepts and ignores (an unknown
config variable): ``-o bhyvesim.acpi_delay=SECONDS`` changes when the guest enables
ACPI, and ``-o bhyvesim.acpi_delay=never`` makes a guest that never does;
``-o bhyvesim.title_delay=SECONDS`` holds the process that long between creating its VM
and setting its title, as a slow device setup does.
``-o bhyvesim.light=1`` makes a process cheap enough to run hundreds at once (the
scale benchmark): no block worker threads, no boot-time CPU burn in the vCPU threads,
and the allocator's free memory handed back once started.

How the process ends is what a supervisor watches, so it is exact: the exit status
of the suspend reason (0 reset, 1 poweroff, 2 halt, 3 triple fault), 4 for errors and
for a VM destroyed under it (1 on 14.x), death by SIGABRT for ``abort``, and death by
SIGTERM when SIGTERM arrives before the guest enabled ACPI. Just before it ends it
writes ``exit N`` or ``signal N`` to ``/var/run/bhyvesim/PID.status``, so that a
watcher that is not its parent learns the wait status.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import heapq
import os
import queue
import resource
import select
import signal
import socket
import stat
import sys
import termios
import threading
import time
import traceback
import tty
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

from supervisor.errors import SupervisorError
from supervisor.host import Host
from supervisor.vmm.bhyveopts import (
    BhyveCommand,
    BhyveCommandError,
    BhyveEarlyExit,
    PciDevice,
    parse_bhyve_argv,
)
from supervisor.vmm.sim import agent, bsd, guest, hardware, pci, procs
from supervisor.vmm.sim.guest import Guest
from supervisor.vmm.sim.host import ROOTED
from supervisor.vmm.sim.kernel import (
    BOOTROM_SEGMENT_SIZE,
    SUSPEND_EXIT_STATUS,
    Kernel,
    host_local_seconds,
)

EXIT_ERROR = 4
EX_OSERR = 71
STATUS_DIR = "/var/run/bhyvesim"

#: CPU time each vCPU thread spends booting, so that per-thread CPU time is real.
BOOT_CPU_SECONDS = 0.01
#: Block I/O worker threads per block device (BLOCKIF_NUMTHR).
BLOCKIF_THREADS = 8
_PAGE = 4096
_PR_SET_NAME = 15

_BLOCK_EMULATIONS = frozenset({"virtio-blk", "nvme", "ahci"})


class _BlockWork:
    """One request for a block device's worker threads."""

    def __init__(self, fn: Callable[[], str]) -> None:
        self.fn = fn
        self.result: str | None = None
        self.done = threading.Event()


class _Exit(Exception):
    """bhyve calls exit() here: the status and what it prints first."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _set_thread_name(name: str) -> None:
    """Name the calling thread (Linux ``comm``, at most 15 bytes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def _status_path(host: Host, pid: int) -> str:
    return host.path(f"{STATUS_DIR}/{pid}.status")


def write_status(host: Host, text: str) -> None:
    """Leave this process's wait status (``exit N`` / ``signal N``) for a watcher."""
    path = _status_path(host, os.getpid())
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(text + "\n")
        os.replace(tmp, path)


class _Bhyve:
    """One simulated bhyve process."""

    def __init__(self, root: str, argv: Sequence[str]) -> None:
        self.root = root
        self.argv = list(argv)
        self.host = Host(root=root, rooted=ROOTED)
        self.hw = hardware.load(root)
        self.kernel = Kernel(root, self.hw)
        self.major = self.hw.major
        self.name = ""
        self.cmd: BhyveCommand | None = None
        self.console_in = -1
        self.console_out = -1
        self.keep_fds: list[int] = []
        self.sockets: list[socket.socket] = []
        self.disks: list[tuple[str, int]] = []
        self.block_threads: list[str] = []
        #: Work for each block device's worker threads (I/O is counted per thread).
        self.block_queues: list[queue.SimpleQueue[_BlockWork]] = []
        self.agent_socket: socket.socket | None = None
        self.agent_conn: socket.socket | None = None
        self.shares: list[tuple[str, bool]] = []
        self.guest: Guest | None = None
        self.acpi_enabled = False
        self.exiting = threading.Lock()
        self.idle = threading.Event()
        #: Work for each vCPU thread: seconds to stay busy (the guest's ``spin``).
        self.vcpu_work: dict[int, queue.SimpleQueue[float]] = {}
        self.timers: list[tuple[float, int, str]] = []
        self.timer_seq = 0
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.light = False

    # -- ending -------------------------------------------------------------------

    def exit(self, status: int) -> NoReturn:
        """End the process with *status*, as bhyve's exit() from any thread."""
        self.exiting.acquire()  # the first exit wins; any later caller waits forever
        write_status(self.host, f"exit {status}")
        procs.unregister(self.root)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)

    def die_by_signal(self, signum: int) -> NoReturn:
        """Die of *signum* with its default action, recording it first."""
        self.exiting.acquire()
        write_status(self.host, f"signal {signum}")
        procs.unregister(self.root)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if signum == signal.SIGABRT:
            # abort() may dump core on FreeBSD; a test run should not leave cores.
            # Python leaves SIGABRT at its default action, from any thread.
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.abort()
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            while True:  # the signal is delivered to some thread; wait for it
                time.sleep(1)
        finally:
            os._exit(128 + signum)  # never linger half-dead, whatever went wrong

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM after ACPI is the power button; anything else kills as by default."""
        if signum == signal.SIGTERM and self.acpi_enabled:
            with contextlib.suppress(BlockingIOError):
                os.write(self.wake_w, b"T")
            return
        self.die_by_signal(signum)

    # -- start-up -----------------------------------------------------------------

    def start(self) -> int:
        """Start the VM; returns only for an exit before the guest runs."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        try:
            self._start()
        except _Exit as e:
            if e.message:
                sys.stderr.write(e.message)
            return e.status
        from supervisor.vmm.sim import qemu

        choice = qemu.load_engine(self.root)
        if choice.engine == "qemu":
            from supervisor.vmm.sim import qemurun

            qemurun.run(self, choice)  # a real guest instead of the scripted one
        threading.Thread(target=self._mevent_guarded, name="mevent", daemon=True).start()
        while True:
            signal.pause()

    def _read_config_file(self, path: str) -> str:
        with open(self.host.path(path), encoding="utf-8") as f:
            return f.read()

    def _start(self) -> None:
        try:
            cmd = parse_bhyve_argv(self.argv, read_file=self._read_config_file)
        except BhyveEarlyExit as e:
            sys.stdout.write(e.stdout)
            sys.stdout.flush()
            raise _Exit(e.exit_status, e.stderr) from None
        except BhyveCommandError as e:
            raise _Exit(e.exit_status, e.stderr) from None
        self.cmd = cmd
        self.name = cmd.vmname
        self._open_vm(cmd)
        try:
            self.kernel.set_topology(self.name, cmd.sockets, cmd.cores, cmd.threads)
        except OSError:
            raise _Exit(EX_OSERR, "bhyve: vm_set_topology\n") from None
        allowed = self.kernel.get(self.name).maxcpus if self.hw.has_unrestricted_guest else 1
        if cmd.cpus > allowed:
            raise _Exit(EXIT_ERROR, f"{cmd.cpus} vCPUs requested but only {allowed} available\n")
        try:
            self.kernel.setup_memory(self.name, cmd.memsize, wired=cmd.wired)
        except OSError as e:
            raise _Exit(EXIT_ERROR, f"Unable to setup memory ({bsd.number(e.errno or 0)})\n") from e
        # init_bootrom(): the devmem segment exists whether or not a ROM is loaded.
        self.kernel.load_bootrom(self.name, b"")
        if cmd.bootrom is not None and not self.hw.has_unrestricted_guest:
            raise _Exit(
                EXIT_ERROR, "ROM boot failed: unrestricted guest capability not available\n"
            )
        for dev in cmd.pci_devices():
            self._init_device(cmd, dev)
        self._activate(cmd)
        self._start_threads(cmd)
        # Real bhyve's device setup (disks, passthrough, firmware) can take a while
        # between creating the VM and setting its title; tests stretch that window.
        time.sleep(_seconds(cmd, "bhyvesim.title_delay"))
        self._set_title()

    def _open_vm(self, cmd: BhyveCommand) -> None:
        romboot = cmd.bootrom is not None
        name = self.name
        if self.major >= 15:
            if self.kernel.exists(name) and self.hw.vmm_loaded:
                if romboot:
                    try:
                        self.kernel.reinit(name)
                    except OSError as e:
                        raise _Exit(EXIT_ERROR, f"bhyve: vm_openf: {_why(e)}\n") from None
                return
            if not romboot:
                raise _Exit(EXIT_ERROR, "bhyve: no bootrom was configured\n")
            try:
                self.kernel.create(name)
            except OSError as e:
                raise _Exit(EXIT_ERROR, f"bhyve: vm_openf: {_why(e)}\n") from None
            return
        # 14.x: vm_create() first; EEXIST means "set up by a loader" or "reinit".
        try:
            self.kernel.create(name)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise _Exit(EXIT_ERROR, f"vm_create: {_why(e)}\n") from None
            if romboot:
                try:
                    self.kernel.reinit(name)
                except OSError as e2:
                    raise _Exit(EXIT_ERROR, f"vm_reinit: {_why(e2)}\n") from None
            return
        if not romboot:
            raise _Exit(EXIT_ERROR, "virtual machine cannot be booted\n")

    def _device_error(self, first: str, code: int) -> _Exit:
        return _Exit(
            EXIT_ERROR, f"{first}\nDevice emulation initialization error: {bsd.strerror(code)}\n"
        )

    def _init_device(self, cmd: BhyveCommand, dev: PciDevice) -> None:
        if dev.emulation in _BLOCK_EMULATIONS:
            self._init_block(dev)
        elif dev.emulation == "lpc":
            self._init_lpc(cmd)
        elif dev.emulation == "virtio-console":
            self._init_vtcon(dev)
        elif dev.emulation == "virtio-9p":
            self._init_9p(dev)
        elif dev.emulation == "passthru":
            problem = pci.passthru_problem(self.root, dev.options, cmd.wired)
            if problem is not None:
                raise self._device_error(problem, errno.EPERM)

    def _init_9p(self, dev: PciDevice) -> None:
        # pci_vt9p_init() opens the shared directory at start-up (before cap_enter).
        path = dev.options.get("path", "")
        try:
            fd = os.open(self.host.path(path), os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            code = e.errno or errno.EIO
            raise self._device_error(
                f"virtio-9p: cannot open '{path}': {bsd.strerror(code)}", code
            ) from None
        self.keep_fds.append(fd)
        self.shares.append((dev.options.get("sharename", ""), "ro" in dev.options))

    def _init_block(self, dev: PciDevice) -> None:
        opts = dev.options
        backends: list[tuple[str, str]] = []
        if dev.emulation == "ahci":
            ports = sorted(
                {int(k.split(".")[1]) for k in opts if k.startswith("port.") and k.count(".") == 2}
            )
            for port in ports:
                path = opts.get(f"port.{port}.path")
                if path is not None:
                    backends.append((path, f"blk-{dev.slot}:{dev.func}:{port}"))
        elif "path" in opts and not (dev.emulation == "nvme" and "ram" in opts):
            backends.append((opts["path"], f"blk-{dev.slot}:{dev.func}"))
        readonly = "ro" in opts
        for path, thread in backends:
            flags = os.O_RDONLY if readonly else os.O_RDWR
            try:
                fd = os.open(self.host.path(path), flags)
            except OSError as e:
                code = e.errno or errno.EIO
                raise self._device_error(
                    f"bhyve: Could not open backing file: {path}: {bsd.strerror(code)}", code
                ) from None
            self.disks.append((path, fd))
            self.block_threads.append(thread)
            self.block_queues.append(queue.SimpleQueue())

    def _init_lpc(self, cmd: BhyveCommand) -> None:
        if cmd.bootrom is not None:
            self._load_rom(cmd.bootrom, cmd.bootvars)
        for number, backend in sorted(cmd.com_ports().items()):
            device = f"com{number}"
            try:
                fds = self._open_uart(backend)
            except OSError as e:
                code = e.errno or errno.EIO
                raise self._device_error(
                    f"Unable to initialize backend '{backend}' for LPC device {device}", code
                ) from None
            if number == 1 and fds is not None:
                self.console_in, self.console_out = fds

    def _load_rom(self, rom: str, varstore: str | None) -> None:
        try:
            with open(self.host.path(rom), "rb") as f:
                image = f.read(BOOTROM_SEGMENT_SIZE + 1)
        except OSError as e:
            code = e.errno or errno.EIO
            raise self._device_error(
                f'Error opening bootrom "{rom}": {bsd.strerror(code)}', code
            ) from None
        if len(image) % _PAGE or len(image) > BOOTROM_SEGMENT_SIZE or not image:
            raise self._device_error(f'Invalid bootrom size {len(image)} for "{rom}"', errno.EINVAL)
        variables: bytes | None = None
        if varstore is not None:
            try:
                fd = os.open(self.host.path(varstore), os.O_RDWR)
            except OSError as e:
                code = e.errno or errno.EIO
                raise self._device_error(
                    f'Error opening bootrom variable file "{varstore}": {bsd.strerror(code)}',
                    code,
                ) from None
            self.keep_fds.append(fd)
            variables = os.pread(fd, BOOTROM_SEGMENT_SIZE, 0)
        self.kernel.load_bootrom(self.name, image, variables)

    def _open_uart(self, backend: str) -> tuple[int, int] | None:
        if backend == "stdio":
            return 0, 1
        if backend.startswith("tcp"):
            return None  # a listening socket console: not simulated
        if os.path.basename(backend).startswith("nmdm"):
            # A devfs lookup of an nmdm name creates the pair.
            try:
                from supervisor.vmm.sim import nmdm

                nmdm.ensure_pair(self.root, backend)
            except (ImportError, SupervisorError):
                pass  # then the open below fails as on a host without nmdm.ko
        fd = os.open(self.host.path(backend), os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
        if not os.isatty(fd):
            os.close(fd)
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        tty.setraw(fd)
        attrs_ = termios.tcgetattr(fd)
        attrs_[2] |= termios.CLOCAL
        termios.tcsetattr(fd, termios.TCSANOW, attrs_)
        return fd, fd

    def _init_vtcon(self, dev: PciDevice) -> None:
        for key, path in sorted(dev.options.items()):
            if not (key.startswith("port.") and key.endswith(".path")):
                continue
            local = self.host.path(path)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(local).st_mode):
                    os.unlink(local)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(local)
                sock.listen(1)
            except OSError as e:
                sock.close()
                code = e.errno or errno.EIO
                raise self._device_error(
                    f"vtcon: cannot bind socket {path}: {bsd.strerror(code)}", code
                ) from None
            self.sockets.append(sock)
            if dev.options.get(key[: -len("path")] + "name") == agent.AGENT_PORT:
                self.agent_socket = sock

    def _activate(self, cmd: BhyveCommand) -> None:
        vcpus = list(range(cmd.cpus))
        with self.kernel.update(self.name) as vm:
            busy = [v for v in vcpus if v in vm.active]
            if busy:
                raise _Exit(EX_OSERR, f"bhyve: could not activate CPU {busy[0]}: Device busy\n")
            vm.active = vcpus
            vm.suspended = []
            vm.debug = vcpus[1:]  # APs wait for the guest's INIT/SIPI
            vm.pid = os.getpid()
            vm.boots += 1
            boot = vm.boots
            # The RTC starts at host local time, or UTC with -u.
            vm.rtc_offset = 0.0 if cmd.rtc_localtime else time.time() - host_local_seconds()
            vm.stats = {}
        self.guest = Guest(self.name, boot, acpi_delay=_acpi_delay(cmd), shares=tuple(self.shares))

    def _start_threads(self, cmd: BhyveCommand) -> None:
        threading.stack_size(256 * 1024)
        self.light = cmd.config_value("bhyvesim.light") in ("1", "true")
        for vcpu in range(cmd.cpus):
            self.vcpu_work[vcpu] = queue.SimpleQueue()
            threading.Thread(target=self._vcpu, args=(vcpu,), daemon=True).start()
        if self.light:
            _trim_heap()
            return
        for prefix, work in zip(self.block_threads, self.block_queues, strict=True):
            for n in range(BLOCKIF_THREADS):
                threading.Thread(
                    target=self._block_thread, args=(f"{prefix}-{n}", work), daemon=True
                ).start()

    def _set_title(self) -> None:
        try:
            import setproctitle
        except ImportError:
            return
        setproctitle.setproctitle(f"bhyve: {self.name}")
        # setproctitle also renames the main thread; FreeBSD's p_comm stays "bhyve".
        _set_thread_name("bhyve")

    # -- threads ------------------------------------------------------------------

    def _idle_thread(self, name: str) -> None:
        _set_thread_name(name)
        self.idle.wait()

    def _block_thread(self, name: str, work: queue.SimpleQueue[_BlockWork]) -> None:
        # The guest's disk I/O runs here, as in blockif's workers, so that the
        # host's per-thread I/O accounting sees it under the blk-S:F-n name.
        _set_thread_name(name)
        while True:
            item = work.get()
            try:
                item.result = item.fn()
            finally:
                item.done.set()

    def _on_agent(self, poller: select.poll, fd: int) -> None:
        # bhyve's vtcon accepts one client per port (an mevent callback, not a
        # thread); the guest's qemu-ga answers what the client sends.
        assert self.guest is not None
        assert self.agent_socket is not None
        ga = self.guest.agent
        if fd == self.agent_socket.fileno():
            try:
                conn, _ = self.agent_socket.accept()
            except OSError:
                return
            if self.agent_conn is not None:
                conn.close()  # the port is taken
                return
            conn.setblocking(False)
            self.agent_conn = conn
            ga.reset_stream()
            poller.register(conn.fileno(), select.POLLIN)
            return
        client = self.agent_conn
        assert client is not None
        try:
            data = client.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            poller.unregister(client.fileno())
            client.close()
            self.agent_conn = None
            return
        reply = ga.receive(data, time.time_ns())
        if reply:
            with contextlib.suppress(OSError):
                client.sendall(reply)
        if ga.shutdown is not None:
            mode, ga.shutdown = ga.shutdown, None
            self._act([guest.Suspend({"reboot": "reset", "halt": "halt"}.get(mode, "poweroff"))])

    def _vcpu(self, vcpu: int) -> None:
        _set_thread_name(f"vcpu {vcpu}")
        spins = 0 if self.light else self._burn(BOOT_CPU_SECONDS)
        ran = time.thread_time_ns()
        stats = {
            "vcpu total runtime": ran * 2,  # TSC ticks at a nominal 2 GHz
            "total number of vm exits": 1000 + spins % 1000,
            "number of times in/out was intercepted": 400 + vcpu,
            "number of times hlt was intercepted": 100,
            "vm exits due to external interrupt": 50,
            "number of times cpuid was intercepted": 30,
        }
        with contextlib.suppress(OSError), self.kernel.update(self.name) as vm:
            vm.stats[str(vcpu)] = {**vm.stats.get(str(vcpu), {}), **stats}
        work = self.vcpu_work[vcpu]
        while True:
            self._burn(work.get())
            ran = time.thread_time_ns()
            with contextlib.suppress(OSError), self.kernel.update(self.name) as vm:
                counters = vm.stats.setdefault(str(vcpu), {})
                counters["vcpu total runtime"] = ran * 2

    @staticmethod
    def _burn(seconds: float) -> int:
        """Use *seconds* of this thread's CPU time; returns how many loops that took."""
        start = time.thread_time()
        spins = 0
        while time.thread_time() - start < seconds:
            spins += 1
        return spins

    def _mevent_guarded(self) -> None:
        try:
            self._mevent()
        except Exception:
            # A simulator bug must not leave a bhyve without its event loop running.
            traceback.print_exc()
            self.exit(EXIT_ERROR)

    def _mevent(self) -> None:
        _set_thread_name("mevent")
        assert self.guest is not None
        bell = self.kernel.open_bell(self.name)
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        poller.register(bell, select.POLLIN)
        if self.console_in >= 0:
            poller.register(self.console_in, select.POLLIN)
        if self.agent_socket is not None:
            poller.register(self.agent_socket.fileno(), select.POLLIN)
        self._act(self.guest.boot())
        # A request that came before the doorbell existed must not be missed.
        self._on_bell(bell)
        while True:
            timeout = -1
            if self.timers:
                timeout = max(0, int((self.timers[0][0] - time.monotonic()) * 1000) + 1)
            for fd, events in poller.poll(timeout):
                if fd == bell:
                    self._on_bell(bell)
                elif fd == self.wake_r:
                    data = os.read(self.wake_r, 64)
                    if b"T" in data:
                        self._act(self.guest.on_power_button())
                elif fd == self.console_in:
                    self._on_console(poller, events)
                else:
                    self._on_agent(poller, fd)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, token = heapq.heappop(self.timers)
                self._act(self.guest.on_timer(token))

    def _on_console(self, poller: select.poll, events: int) -> None:
        assert self.guest is not None
        try:
            data = os.read(self.console_in, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # The other side is gone for good (a pty master closed): stop listening
            # rather than spin on a hang-up that will never clear.
            poller.unregister(self.console_in)
            return
        self._act(self.guest.on_input(data))

    def take_doorbell(self, bell: int) -> tuple[list[int], str | None]:
        """What bhyvectl rang the doorbell for: the NMIs to deliver (counted in the VM's
        statistics as the kernel does) and a pending suspend, if any.

        Raises:
            OSError: the VM is gone (destroyed under us).
        """
        with contextlib.suppress(BlockingIOError):
            os.read(bell, 4096)
        with self.kernel.update(self.name) as vm:
            nmis, vm.nmi = vm.nmi, []
            for v in nmis:
                counters = vm.stats.setdefault(str(v), {})
                key = "number of NMIs delivered to vcpu"
                counters[key] = counters.get(key, 0) + 1
            return nmis, vm.suspend

    def _on_bell(self, bell: int) -> None:
        assert self.guest is not None
        try:
            nmis, how = self.take_doorbell(bell)
        except OSError:
            self._destroyed()
        if how is not None:
            self._suspended(how)
        for v in nmis:
            self._act(self.guest.on_nmi(v))

    # -- guest actions ------------------------------------------------------------

    def _act(self, actions: Sequence[guest.Action]) -> None:
        assert self.guest is not None
        for action in actions:
            if isinstance(action, guest.Output):
                self._console_write(action.data)
            elif isinstance(action, guest.StartTimer):
                self.timer_seq += 1
                deadline = time.monotonic() + action.delay
                heapq.heappush(self.timers, (deadline, self.timer_seq, action.token))
            elif isinstance(action, guest.EnableAcpi):
                self.acpi_enabled = True
                with contextlib.suppress(OSError), self.kernel.update(self.name) as vm:
                    vm.debug = []
            elif isinstance(action, guest.Suspend):
                self._guest_suspend(action.how)
            elif isinstance(action, guest.Abort):
                self.die_by_signal(signal.SIGABRT)
            elif isinstance(action, guest.WriteMemory):
                self._write_memory(action.gpa, action.data)
            elif isinstance(action, guest.WriteDisk):
                self._act(self.guest.on_disk_written(self._disk_io(action.kib, action.read)))
            elif isinstance(action, guest.Spin):
                work = self.vcpu_work.get(action.vcpu)
                if work is None:
                    message = f"spin: no vcpu {action.vcpu}"
                else:
                    work.put(action.seconds)
                    message = f"vcpu {action.vcpu} busy for {action.seconds:g} s"
                self._act(self.guest.on_spin_started(message))

    def _console_write(self, data: bytes) -> None:
        if self.console_out < 0:
            return
        # bhyve never blocks on its console: what the tty cannot take is dropped.
        with contextlib.suppress(OSError):
            os.write(self.console_out, data)

    def _write_memory(self, gpa: int, data: bytes) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.kernel.device_path(self.name), os.O_WRONLY)
            try:
                os.pwrite(fd, data, gpa)
            finally:
                os.close(fd)

    def _disk_io(self, kib: int, read: bool) -> str:
        verb = "read-disk" if read else "write-disk"
        if not self.disks:
            return f"{verb}: no disk"
        path, fd = self.disks[0]
        block = (f"BHYVESIM {self.name} ".encode() * 64)[:1024]

        def io() -> str:
            try:
                for i in range(kib):
                    if read:
                        os.pread(fd, 1024, i * 1024)
                    else:
                        os.pwrite(fd, block, i * 1024)
                if not read:
                    os.fsync(fd)
            except OSError as e:
                return f"{verb}: {path}: {bsd.strerror(e.errno or errno.EIO)}"
            return f"read {kib} KiB from {path}" if read else f"wrote {kib} KiB to {path}"

        item = _BlockWork(io)
        self.block_queues[0].put(item)
        item.done.wait()
        return str(item.result)

    def _guest_suspend(self, how: str) -> None:
        try:
            self.kernel.suspend(self.name, how)
        except OSError as e:
            if e.errno != errno.EALREADY:
                self._destroyed()
        try:
            first = self.kernel.get(self.name).suspend or how
        except OSError:
            self._destroyed()
        self._suspended(first)

    def _suspended(self, how: str) -> NoReturn:
        """Every vCPU has stopped for *how*: bhyve exits with its status."""
        assert self.cmd is not None
        try:
            with self.kernel.update(self.name) as vm:
                vm.suspended = sorted(vm.active)
                vm.pid = None
        except OSError:
            self._destroyed()
        if how == "poweroff" and self.cmd.destroy_on_poweroff:
            with contextlib.suppress(OSError):
                self.kernel.destroy(self.name)
        self.exit(SUSPEND_EXIT_STATUS[how])

    def _destroyed(self) -> NoReturn:
        """The VM was destroyed under us: vm_run fails (ENXIO)."""
        sys.stderr.write(f"vm_run error -1, errno {bsd.number(errno.ENXIO)}\n")
        self.exit(EXIT_ERROR if self.major >= 15 else 1)


def _trim_heap() -> None:
    """Give the start-up's freed heap back to the system (glibc's malloc_trim)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _acpi_delay(cmd: BhyveCommand) -> float | None:
    value = cmd.config_value("bhyvesim.acpi_delay")
    if value is None:
        return guest.ACPI_DELAY
    if value == "never":
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return guest.ACPI_DELAY


def _seconds(cmd: BhyveCommand, key: str) -> float:
    try:
        return max(0.0, float(cmd.config_value(key) or 0))
    except ValueError:
        return 0.0


def _why(e: OSError) -> str:
    return bsd.strerror(e.errno or errno.EIO)


def main(root: str, argv: Sequence[str]) -> int:
    """Entry point of the installed ``/usr/sbin/bhyve`` of the simulated host at *root*."""
    procs.register(root)
    bhyve = _Bhyve(root, argv)
    # A status left by an earlier process that had this pid must not be read as ours.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_status_path(bhyve.host, os.getpid()))
    status = bhyve.start()
    write_status(bhyve.host, f"exit {status}")
    procs.unregister(root)
    return status
