"""The simulated vmm(4) kernel state, shared by every simulated process of one host.

FreeBSD keeps a VM in the kernel, independent of any bhyve process: it exists from
create to destroy, outlives a crashed or killed bhyve, and remembers its memory, its
vCPU sets and a pending suspend request. The simulator keeps the same state in files
under ``ROOT/.simkernel/`` (outside the FreeBSD trees), one JSON record per VM,
changed only under an exclusive ``fcntl`` lock so that ``bhyve``, ``bhyvectl`` and
``bhyveload`` processes see one consistent kernel.

Theory of operation:

- ``/dev/vmm/NAME`` (``ROOT/dev/vmm/NAME``) exists exactly as long as the VM does. It
  is a sparse file laid out at guest-physical addresses, so the supervisor reads guest
  memory with the same ``pread`` at a GPA as on FreeBSD: RAM at ``[0, min(mem, 3G))``
  and ``[4G, 4G + mem - 3G)``, a loaded boot ROM just below 4 GiB.
- Errors are :class:`OSError` with the errno the FreeBSD ioctl returns: ``ENOENT`` for
  a missing VM, ``EEXIST``, ``EINVAL`` (name, memory size), ``EBUSY`` (``VM_REINIT``
  while vCPUs are not all suspended), ``EALREADY`` (a second suspend request).
- A running bhyve listens on a FIFO, its *doorbell* (``ROOT/.simkernel/bell/NAME``).
  Whatever changes a VM under a running bhyve (suspend, NMI, destroy) rings it; the
  bhyve then rereads the record, as vCPUs notice a request on their next VM exit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator

import attrs

from supervisor._record import Record
from supervisor.vmm.sim.hardware import Hardware

KERNEL_DIR = ".simkernel"

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: libvmmapi's lowmem limit: RAM above it is mapped from 4 GiB up.
LOWMEM_LIMIT = 3 * GiB
HIGHMEM_BASE = 4 * GiB
#: bhyve always allocates a devmem segment of this size named "bootrom".
BOOTROM_SEGMENT_SIZE = 16 * MiB
#: VM_MAX_NAMELEN on 14.x and 15.x.
MAX_NAME_LEN = 229

#: Suspend reasons (``enum vm_suspend_how``) and the bhyve exit status each causes.
SUSPEND_EXIT_STATUS: dict[str, int] = {"reset": 0, "poweroff": 1, "halt": 2, "triplefault": 3}

SYSMEM_SEGID = 0


def bootrom_segid(major: int) -> int:
    """The segment id of "bootrom": 1 on 14.x, 8 (``VM_BOOTROM``) from 15.0 on."""
    return 8 if major >= 15 else 1


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@attrs.define(repr=False)
class MemSeg(Record):
    """A memory segment (``VM_GET_MEMSEG``): guest RAM (name ``""``) or device memory."""

    segid: int
    length: int
    name: str = ""


@attrs.define(repr=False)
class MemMap(Record):
    """A mapping of part of a segment into guest-physical space (``VM_MMAP_GETNEXT``)."""

    gpa: int
    length: int
    segid: int
    segoff: int
    prot: str
    wired: bool = False


@attrs.define(repr=False)
class VmState(Record):
    """One VM as the simulated kernel knows it."""

    name: str
    maxcpus: int
    sockets: int = 1
    cores: int = 1
    threads: int = 1
    memsegs: list[MemSeg] = attrs.field(factory=list)
    memmaps: list[MemMap] = attrs.field(factory=list)
    active: list[int] = attrs.field(factory=list)
    suspended: list[int] = attrs.field(factory=list)
    debug: list[int] = attrs.field(factory=list)
    suspend: str | None = None
    pid: int | None = None
    boots: int = 0
    #: Seconds between the RTC and host local time; ``None`` until bhyve sets it.
    rtc_offset: float | None = None
    nmi: list[int] = attrs.field(factory=list)
    stats: dict[str, dict[str, int]] = attrs.field(factory=dict)

    @property
    def sysmem(self) -> MemSeg | None:
        """Guest RAM, once set up."""
        return next((s for s in self.memsegs if s.segid == SYSMEM_SEGID), None)

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VmState:
        data = json.loads(text)
        data["memsegs"] = [MemSeg(**s) for s in data["memsegs"]]
        data["memmaps"] = [MemMap(**m) for m in data["memmaps"]]
        return cls(**data)


def ram_layout(memsize: int) -> list[tuple[int, int, int]]:
    """(gpa, length, segment offset) of guest RAM for *memsize* bytes.

    One sysmem object covers the 3G-4G hole (as 14.x libvmmapi allocates it), so the
    high part sits at the same offset in the segment as in guest-physical space.
    """
    low = min(memsize, LOWMEM_LIMIT)
    out = [(0, low, 0)]
    if memsize > LOWMEM_LIMIT:
        out.append((HIGHMEM_BASE, memsize - LOWMEM_LIMIT, HIGHMEM_BASE))
    return out


def sysmem_length(memsize: int) -> int:
    """The length of the sysmem segment for *memsize* bytes of RAM."""
    if memsize > LOWMEM_LIMIT:
        return HIGHMEM_BASE + memsize - LOWMEM_LIMIT
    return memsize


def valid_name(name: str) -> bool:
    """Whether vmm accepts *name* (a devfs name of at most 229 bytes)."""
    return 0 < len(name.encode()) <= MAX_NAME_LEN and "/" not in name and name not in (".", "..")


class Kernel:
    """The simulated vmm state of the host rooted at *root*.

    Methods take the kernel lock themselves; :meth:`locked` lets a caller group several
    of them into one atomic step (the lock is re-entrant within a process).
    """

    def __init__(self, root: str, hw: Hardware) -> None:
        self.root = root
        self.hw = hw
        self._dir = os.path.join(root, KERNEL_DIR)
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd = -1
        for sub in ("vm", "bell", "procs"):
            os.makedirs(os.path.join(self._dir, sub), exist_ok=True)

    # -- paths ---------------------------------------------------------------------

    def device_path(self, name: str) -> str:
        """The local path of ``/dev/vmm/NAME``."""
        return os.path.join(self.root, "dev", "vmm", name)

    def devmem_path(self, name: str, segment: str) -> str:
        """The local path of ``/dev/vmm.io/NAME.SEGMENT``."""
        return os.path.join(self.root, "dev", "vmm.io", f"{name}.{segment}")

    def bell_path(self, name: str) -> str:
        """The doorbell FIFO a running bhyve of *name* listens on."""
        return os.path.join(self._dir, "bell", name)

    def _state_path(self, name: str) -> str:
        return os.path.join(self._dir, "vm", f"{name}.json")

    # -- locking and records -------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the kernel lock (re-entrant in this process, exclusive across them)."""
        with self._thread_lock:
            if self._depth == 0:
                self._fd = os.open(os.path.join(self._dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    os.close(self._fd)  # closing releases the flock
                    self._fd = -1

    def names(self) -> list[str]:
        """Every existing VM."""
        return sorted(n.removesuffix(".json") for n in os.listdir(os.path.join(self._dir, "vm")))

    def exists(self, name: str) -> bool:
        """Whether VM *name* exists."""
        return valid_name(name) and os.path.exists(self._state_path(name))

    def get(self, name: str) -> VmState:
        """The record of VM *name*.

        Raises:
            OSError: ``ENOENT`` when there is no such VM.
        """
        if not valid_name(name):
            raise _err(errno.ENOENT)
        try:
            with open(self._state_path(name), encoding="utf-8") as f:
                return VmState.from_json(f.read())
        except FileNotFoundError:
            raise _err(errno.ENOENT) from None

    def put(self, vm: VmState) -> None:
        """Store *vm* (call under :meth:`locked`)."""
        path = self._state_path(vm.name)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(vm.to_json())
        os.replace(tmp, path)

    @contextlib.contextmanager
    def update(self, name: str) -> Iterator[VmState]:
        """Read VM *name*, let the caller change it, and store it, all under the lock."""
        with self.locked():
            vm = self.get(name)
            yield vm
            self.put(vm)

    # -- ioctls --------------------------------------------------------------------

    def create(self, name: str) -> VmState:
        """``VMMCTL_VM_CREATE``: a new VM without memory or running vCPUs.

        Raises:
            OSError: ``EINVAL`` for a bad name, ``EEXIST`` when it exists, ``ENXIO``
                when vmm is not usable on this host.
        """
        if not self.hw.can_run_guests:
            raise _err(errno.ENXIO)
        if not valid_name(name):
            raise _err(errno.EINVAL)
        with self.locked():
            if self.exists(name):
                raise _err(errno.EEXIST)
            vm = VmState(name=name, maxcpus=self.hw.ncpu)
            self.put(vm)
            os.makedirs(os.path.dirname(self.device_path(name)), exist_ok=True)
            with open(self.device_path(name), "wb"):
                pass
            os.chmod(self.device_path(name), 0o600)
        return vm

    def destroy(self, name: str) -> None:
        """``VMMCTL_VM_DESTROY``: the VM, its device nodes and its memory go away."""
        with self.locked():
            self.get(name)
            os.unlink(self._state_path(name))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.device_path(name))
            iodir = os.path.dirname(self.devmem_path(name, "x"))
            if os.path.isdir(iodir):
                for entry in os.listdir(iodir):
                    if entry.startswith(f"{name}."):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(iodir, entry))
        self.ring(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.bell_path(name))

    def reinit(self, name: str) -> VmState:
        """``VM_REINIT``: reset vCPUs and devices, keep guest RAM.

        Raises:
            OSError: ``EBUSY`` unless every active vCPU is suspended (a bhyve is
                running it, or one was killed before its vCPUs stopped).
        """
        with self.update(name) as vm:
            if sorted(vm.suspended) != sorted(vm.active):
                raise _err(errno.EBUSY)
            vm.active, vm.suspended, vm.debug, vm.nmi = [], [], [], []
            vm.suspend = None
            vm.stats = {}
            # Device memory (the boot ROM) is freed; sysmem and its mappings stay.
            vm.memsegs = [s for s in vm.memsegs if s.segid == SYSMEM_SEGID]
            vm.memmaps = [m for m in vm.memmaps if m.segid == SYSMEM_SEGID]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.devmem_path(name, "bootrom"))
        return vm

    def set_topology(self, name: str, sockets: int, cores: int, threads: int) -> None:
        """``VM_SET_TOPOLOGY``; ``EINVAL`` when the product exceeds maxcpus."""
        with self.update(name) as vm:
            if sockets * cores * threads > vm.maxcpus:
                raise _err(errno.EINVAL)
            vm.sockets, vm.cores, vm.threads = sockets, cores, threads

    def setup_memory(self, name: str, memsize: int, *, wired: bool = False) -> VmState:
        """``vm_setup_memory()``: allocate and map guest RAM, or reuse what a loader set up.

        Raises:
            OSError: ``EINVAL`` when RAM of another size already exists.
        """
        with self.update(name) as vm:
            existing = vm.sysmem
            if existing is not None:
                if existing.length != sysmem_length(memsize):
                    raise _err(errno.EINVAL)
            else:
                vm.memsegs.insert(0, MemSeg(SYSMEM_SEGID, sysmem_length(memsize)))
                for gpa, length, off in ram_layout(memsize):
                    vm.memmaps.append(MemMap(gpa, length, SYSMEM_SEGID, off, "RWX", wired))
                vm.memmaps.sort(key=lambda m: m.gpa)
        with open(self.device_path(name), "r+b") as f:
            end = max(m.gpa + m.length for m in vm.memmaps if m.segid == SYSMEM_SEGID)
            if os.fstat(f.fileno()).st_size < end:
                f.truncate(end)
        return vm

    def load_bootrom(self, name: str, rom: bytes, varstore: bytes | None = None) -> None:
        """Allocate the 16 MiB "bootrom" segment and map *rom* (and a varstore) below 4G."""
        segid = bootrom_segid(self.hw.major)
        with self.update(name) as vm:
            vm.memsegs = [s for s in vm.memsegs if s.segid != segid]
            vm.memsegs.append(MemSeg(segid, BOOTROM_SEGMENT_SIZE, "bootrom"))
            vm.memmaps = [m for m in vm.memmaps if m.segid != segid]
            top = BOOTROM_SEGMENT_SIZE - len(rom)
            if rom:
                vm.memmaps.append(MemMap(HIGHMEM_BASE - len(rom), len(rom), segid, top, "R-X"))
            if varstore:
                gpa = HIGHMEM_BASE - len(rom) - len(varstore)
                vm.memmaps.append(MemMap(gpa, len(varstore), segid, top - len(varstore), "RW-"))
            vm.memmaps.sort(key=lambda m: m.gpa)
            vm.memsegs.sort(key=lambda s: s.segid)
        seg = self.devmem_path(name, "bootrom")
        os.makedirs(os.path.dirname(seg), exist_ok=True)
        with open(seg, "wb") as f:
            f.truncate(BOOTROM_SEGMENT_SIZE)
            if varstore:
                f.seek(BOOTROM_SEGMENT_SIZE - len(rom) - len(varstore))
                f.write(varstore)
            f.seek(BOOTROM_SEGMENT_SIZE - len(rom))
            f.write(rom)
        os.chmod(seg, 0o600)
        fd = os.open(self.device_path(name), os.O_WRONLY)
        try:
            if varstore:
                os.pwrite(fd, varstore, HIGHMEM_BASE - len(rom) - len(varstore))
            if rom:
                os.pwrite(fd, rom, HIGHMEM_BASE - len(rom))
        finally:
            os.close(fd)

    def suspend(self, name: str, how: str) -> None:
        """``VM_SUSPEND``: ask every vCPU to stop for *how* (reset, poweroff...).

        Raises:
            OSError: ``EALREADY`` when a suspend is already pending or done.
        """
        if how not in SUSPEND_EXIT_STATUS:
            raise ValueError(f"how: must be one of {sorted(SUSPEND_EXIT_STATUS)}, got {how!r}")
        with self.update(name) as vm:
            if vm.suspend is not None:
                raise _err(errno.EALREADY)
            vm.suspend = how
        self.ring(name)

    def inject_nmi(self, name: str, vcpu: int) -> None:
        """``VM_INJECT_NMI``; ``EINVAL`` for a vCPU id beyond maxcpus."""
        with self.update(name) as vm:
            if not 0 <= vcpu < vm.maxcpus:
                raise _err(errno.EINVAL)
            vm.nmi.append(vcpu)
        self.ring(name)

    def set_rtc(self, name: str, seconds: int) -> None:
        """``VM_RTC_SETTIME``: make the RTC read *seconds* now."""
        with self.update(name) as vm:
            vm.rtc_offset = seconds - host_local_seconds()

    def rtc_seconds(self, vm: VmState) -> int:
        """What the RTC of *vm* reads now (0 until bhyve started it)."""
        if vm.rtc_offset is None:
            return 0
        return int(host_local_seconds() + vm.rtc_offset)

    # -- the doorbell -------------------------------------------------------------

    def ring(self, name: str) -> None:
        """Wake the bhyve running *name*, if there is one."""
        try:
            fd = os.open(self.bell_path(name), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # no FIFO, or nobody listening (ENXIO)
        try:
            os.write(fd, b"!")
        except BlockingIOError:
            pass  # the FIFO is full: the bhyve has a wakeup pending anyway
        finally:
            os.close(fd)

    def open_bell(self, name: str) -> int:
        """Create and open the doorbell of *name* for the bhyve that runs it.

        Opened read-write so that the FIFO never reports hang-up when a ringer closes.
        """
        path = self.bell_path(name)
        with contextlib.suppress(FileExistsError):
            os.mkfifo(path, 0o600)
        return os.open(path, os.O_RDWR | os.O_NONBLOCK)


def host_local_seconds() -> float:
    """Host local wall time expressed as if it were UTC, as bhyve seeds the RTC."""
    now = time.time()
    return now + time.localtime(now).tm_gmtoff
