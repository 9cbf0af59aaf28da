"""Per-disk I/O numbers of a running guest, from the OS's per-thread accounting.

bhyve keeps no per-device counters, but each block device gets its own worker threads,
named ``blk-<slot>:<func>-<n>`` (AHCI: ``blk-<slot>:<func>:<port>-<n>``), and every
read and write of the guest's disk happens on one of them. Summing the OS's I/O
accounting of those threads gives the disk's numbers:

FreeBSD
    ``procstat -t PID`` names the threads (TID → TDNAME) and ``procstat -r -H PID``
    gives each thread's rusage; its ``block reads`` / ``block writes`` lines
    (``ru_inblock`` / ``ru_oublock``) are I/O operations that reached a device, so
    they give ``rd_req`` / ``wr_req``. rusage counts no bytes: the byte fields are
    absent, not zero.
Linux (the simulated host)
    ``/proc/PID/task/TID/comm`` names the thread, ``/proc/PID/task/TID/io`` counts
    its read/write system calls (``syscr``/``syscw`` → ``rd_req``/``wr_req``) and
    their bytes (``rchar``/``wchar`` → ``rd_bytes``/``wr_bytes``).

Which one is used depends on the platform the supervisor runs on, as for the console
pair and process watching. The parsers are pure.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

import trio

from supervisor.domain.model import Disk
from supervisor.host import Host
from supervisor.vmm.hostexec import run_tool

if TYPE_CHECKING:
    from supervisor.vmm.bhyveopts import BhyveCommand

#: How the FreeBSD rusage lines map to libvirt's field names.
_RUSAGE_FIELDS = {"block reads": "rd_req", "block writes": "wr_req"}
#: How Linux /proc/TID/io keys map to libvirt's field names.
_PROC_IO_FIELDS = {"syscr": "rd_req", "rchar": "rd_bytes", "syscw": "wr_req", "wchar": "wr_bytes"}


def thread_prefix(cmd: BhyveCommand, disk: Disk) -> str | None:
    """The worker-thread prefix (``blk-4:0``) of *disk* in the bhyve command, by path."""
    for dev in cmd.pci_devices():
        opts = dev.options
        if dev.emulation == "ahci":
            for key, value in opts.items():
                m = re.fullmatch(r"port\.(\d+)\.path", key)
                if m and value == disk.source:
                    return f"blk-{dev.slot}:{dev.func}:{m.group(1)}"
        elif opts.get("path") == disk.source and dev.emulation in ("virtio-blk", "nvme"):
            return f"blk-{dev.slot}:{dev.func}"
    return None


def is_worker(name: str, prefix: str) -> bool:
    return re.fullmatch(re.escape(prefix) + r"-\d+", name) is not None


def parse_procstat_threads(text: str) -> dict[int, str]:
    """``procstat -t PID``: TID → thread name. Names may contain a space (``vcpu 0``)."""
    out: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].isdigit() or not parts[1].isdigit():
            continue  # the header
        name = parts[3]
        if name == "vcpu" and len(parts) > 4 and parts[4].isdigit():
            name = f"vcpu {parts[4]}"
        out[int(parts[1])] = name
    return out


def parse_procstat_rusage(text: str) -> dict[int, dict[str, int]]:
    """``procstat -r -H PID``: TID → {resource: value} for integer resources."""
    out: dict[int, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or not parts[0].isdigit() or not parts[1].isdigit():
            continue
        resource = " ".join(parts[3:-1])
        if parts[-1].isdigit():
            out.setdefault(int(parts[1]), {})[resource] = int(parts[-1])
    return out


def sum_rusage(
    threads: dict[int, str], rusage: dict[int, dict[str, int]], prefix: str
) -> dict[str, int]:
    totals: dict[str, int] = {}
    for tid, name in threads.items():
        if not is_worker(name, prefix):
            continue
        for resource, field in _RUSAGE_FIELDS.items():
            if resource in rusage.get(tid, {}):
                totals[field] = totals.get(field, 0) + rusage[tid][resource]
    return totals


def parse_proc_io(text: str) -> dict[str, int]:
    """``/proc/PID/task/TID/io``: libvirt field → value."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        field = _PROC_IO_FIELDS.get(key.strip())
        if field is not None and value.strip().isdigit():
            out[field] = int(value)
    return out


def _linux_totals(pid: int, prefix: str) -> tuple[dict[str, int], int]:
    totals: dict[str, int] = {}
    workers = 0
    task_dir = f"/proc/{pid}/task"
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/comm", encoding="utf-8", errors="replace") as f:
                name = f.read().rstrip("\n")
            if not is_worker(name, prefix):
                continue
            with open(f"{task_dir}/{tid}/io", encoding="ascii") as f:
                io = parse_proc_io(f.read())
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        workers += 1
        for k, v in io.items():
            totals[k] = totals.get(k, 0) + v
    return totals, workers


async def worker_io(host: Host, pid: int, prefix: str) -> tuple[dict[str, int], int]:
    """The summed I/O numbers of bhyve *pid*'s worker threads named *prefix*-N, and
    how many such threads there are."""
    if sys.platform.startswith("freebsd"):
        names = parse_procstat_threads(
            (await run_tool(host, ["procstat", "-t", str(pid)], check=True)).stdout
        )
        usage = parse_procstat_rusage(
            (await run_tool(host, ["procstat", "-r", "-H", str(pid)], check=True)).stdout
        )
        workers = sum(1 for n in names.values() if is_worker(n, prefix))
        return sum_rusage(names, usage, prefix), workers
    return await trio.to_thread.run_sync(_linux_totals, pid, prefix)
