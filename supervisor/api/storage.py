"""Storage and guest-agent methods: block info/peek/stats/copy/pull, disk snapshots,
filesystem freeze/thaw and the agent's time and shutdown, and background jobs.

bhyve has no monitor to ask, so each call has its own mechanism: ``pread`` on the
image or zvol, the OS's accounting of bhyve's ``blk-S:F-n`` worker threads, ``zfs(8)``
for snapshots and zvol copies, and the QEMU guest agent over the guest's
``org.qemu.guest_agent.0`` virtio-console socket.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import attrs
import trio

from supervisor._lazy import lazy_module
from supervisor.actors import lifecycle as lc
from supervisor.errors import (
    GuestAgentError,
    InvalidStateError,
    InvalidValueError,
    UnsupportedError,
)
from supervisor.jobs import Job, JobRegistry
from supervisor.rpc import bulk
from supervisor.rpc.dispatch import CallContext, Registry
from supervisor.storage import zfsparse
from supervisor.storage.ninep import NinePCheck
from supervisor.storage.zfs import ZfsCli, load_lzc
from supervisor.vmm.argv import build_commands

if TYPE_CHECKING:
    from supervisor.agent import client as agent_client
    from supervisor.agent import protocol as agent_protocol
    from supervisor.storage import copy as copymod
    from supervisor.storage import disks
    from supervisor.storage import stats as statsmod
else:
    # Loaded by the first call that needs them, not by every start of the daemon.
    agent_client = lazy_module("supervisor.agent.client")
    agent_protocol = lazy_module("supervisor.agent.protocol")
    copymod = lazy_module("supervisor.storage.copy")
    disks = lazy_module("supervisor.storage.disks")
    statsmod = lazy_module("supervisor.storage.stats")

if TYPE_CHECKING:
    from supervisor.daemon import Daemon, Guest


#: The least time between two progress reports of a file copy (seconds).
COPY_REPORT_INTERVAL = 0.02


def agent_for(daemon: Daemon, guest: Guest) -> agent_client.AgentClient:
    """The guest agent of a running *guest*.

    Raises:
        UnsupportedError: the guest has no ``org.qemu.guest_agent.0`` channel.
        InvalidStateError: the guest is not running.
    """
    for ch in guest.domain.channels:
        if ch.name == agent_protocol.AGENT_PORT_NAME:
            if guest.actor.state is not lc.State.RUNNING:
                raise InvalidStateError(
                    f"guest {guest.domain.name} is {guest.actor.state.value}, not running"
                )
            return agent_client.AgentClient(daemon.host.path(ch.path), guest.domain.name)
    raise UnsupportedError(
        f"guest {guest.domain.name} has no guest agent channel "
        f"(a virtio-console port named {agent_protocol.AGENT_PORT_NAME})",
        field="devices.channel",
    )


def _has_agent(guest: Guest) -> bool:
    return any(ch.name == agent_protocol.AGENT_PORT_NAME for ch in guest.domain.channels)


def register(reg: Registry, daemon: Daemon) -> None:
    """Add the storage and agent methods, bound to *daemon*, to *reg*."""
    method = reg.method
    zfs = ZfsCli(daemon.host, load_lzc())
    jobs = JobRegistry(daemon.bus, daemon.spawn)
    daemon.launch_hooks.append(NinePCheck(daemon.host))

    def backend(guest: Guest, disk: str) -> disks.FileDisk | disks.ZvolDisk:
        _, d = disks.find_disk(guest.domain, disk)
        assert d.source is not None
        return disks.backend_for(daemon.host, zfs, d.source)

    # -- guest agent -------------------------------------------------------------------

    @method("domain.agent_ping", access="ro")
    async def agent_ping(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """Whether the guest agent answers (``guest-ping``)."""
        await agent_for(daemon, daemon.lookup(name, uuid)).ping()
        return {"alive": True}

    @method("domain.agent_info", access="ro")
    async def agent_info(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """The agent's version and enabled commands (``guest-info``)."""
        info = await agent_for(daemon, daemon.lookup(name, uuid)).info()
        return {"version": info.version, "commands": list(info.commands)}

    @method("domain.agent_get_time", access="ro")
    async def agent_get_time(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """The guest's clock from its agent: seconds and nanoseconds since the epoch."""
        ns = await agent_for(daemon, daemon.lookup(name, uuid)).get_time()
        return {"seconds": ns // 10**9, "nseconds": ns % 10**9}

    @method("domain.agent_set_time", access="rw")
    async def agent_set_time(
        ctx: CallContext,
        name: str | None = None,
        uuid: str | None = None,
        seconds: int | None = None,
        nseconds: int = 0,
    ) -> dict[str, Any]:
        """Set the guest's clock (no *seconds*: from its own RTC, as after a resume)."""
        if seconds is not None and seconds < 0:
            raise InvalidValueError("seconds: must not be negative", field="seconds")
        if not 0 <= nseconds < 10**9:
            raise InvalidValueError("nseconds: must be in [0, 1e9)", field="nseconds")
        ga = agent_for(daemon, daemon.lookup(name, uuid))
        await ga.set_time(None if seconds is None else seconds * 10**9 + nseconds)
        return {"set": True}

    @method("domain.agent_shutdown", access="rw")
    async def agent_shutdown(
        ctx: CallContext, name: str | None = None, uuid: str | None = None, mode: str = "powerdown"
    ) -> dict[str, Any]:
        """Ask the guest OS to ``powerdown``, ``reboot`` or ``halt`` through its agent.

        A reboot this way ends bhyve with exit 0, which the supervisor restarts.
        """
        await agent_for(daemon, daemon.lookup(name, uuid)).shutdown(mode)
        return {"requested": mode}

    @method("domain.fs_freeze", access="rw")
    async def fs_freeze(
        ctx: CallContext,
        name: str | None = None,
        uuid: str | None = None,
        mountpoints: list[str] | None = None,
    ) -> dict[str, Any]:
        """Freeze the guest's filesystems (all, or *mountpoints*); how many were frozen."""
        ga = agent_for(daemon, daemon.lookup(name, uuid))
        return {"frozen": await ga.fsfreeze_freeze(mountpoints)}

    @method("domain.fs_thaw", access="rw")
    async def fs_thaw(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """Thaw the guest's filesystems; how many were thawed."""
        return {"thawed": await agent_for(daemon, daemon.lookup(name, uuid)).fsfreeze_thaw()}

    @method("domain.fs_status", access="ro")
    async def fs_status(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """``frozen`` or ``thawed``."""
        return {"status": await agent_for(daemon, daemon.lookup(name, uuid)).fsfreeze_status()}

    # -- block calls -------------------------------------------------------------------

    @method("domain.get_block_info", access="ro")
    async def get_block_info(
        ctx: CallContext, disk: str, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """Capacity, allocation and physical size in bytes of a disk (target or path)."""
        b = backend(daemon.lookup(name, uuid), disk)
        try:
            info = await b.info()
        except FileNotFoundError:
            raise InvalidValueError(
                f"disk: {b.source} does not exist on the host", field="disk"
            ) from None
        return {"disk": disk, "kind": b.kind, "source": b.source, **attrs.asdict(info)}

    @method("domain.block_peek", access="ro", upgrade=True)
    async def block_peek(
        ctx: CallContext,
        disk: str,
        offset: int,
        size: int,
        name: str | None = None,
        uuid: str | None = None,
        stream: bool = False,
        to_fd: bool = False,
    ) -> dict[str, Any]:
        """*size* bytes (at most 1 MiB) at *offset* of a disk, base64 in ``data``.

        With ``stream`` true, *size* has no cap: the reply has no ``data``, and the
        connection then carries exactly ``size`` raw bytes and is closed. With ``to_fd``
        true (and no cap either), the client sends one byte carrying a descriptor it
        opened for writing (``SCM_RIGHTS``) after the reply; the daemon writes the
        bytes into it and answers one line, ``{"written": N}`` (with ``error`` when it
        fell short).
        """
        b = backend(daemon.lookup(name, uuid), disk)
        if stream or to_fd:
            fd = await disks.open_for_stream(b, offset, size)
            return bulk.reply_with_range(
                ctx, fd, offset, size, key="offset", to_fd=to_fd, what=b.source
            )
        data = await disks.peek(b, offset, size)
        return {"offset": offset, "size": len(data), "data": base64.b64encode(data).decode()}

    @method("domain.block_stats", access="ro")
    async def block_stats(
        ctx: CallContext, disk: str, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """I/O counters of a running guest's disk, from the OS's accounting of bhyve's
        worker threads for it. Fields the OS does not count are absent."""
        g = daemon.lookup(name, uuid)
        _, d = disks.find_disk(g.domain, disk)
        pid = g.actor.machine.pid
        if pid is None or g.actor.state is not lc.State.RUNNING:
            raise InvalidStateError(f"guest {g.domain.name} is not running")
        plan = g.actor.last_plan
        argv = plan.bhyve if plan is not None else build_commands(g.domain, daemon.caps).bhyve
        from supervisor.vmm.bhyveopts import parse_bhyve_argv  # sizeable; rarely needed

        prefix = statsmod.thread_prefix(parse_bhyve_argv(list(argv)), d)
        if prefix is None:
            raise UnsupportedError(f"disk: {disk} has no bhyve block worker", field="disk")
        totals, workers = await statsmod.worker_io(daemon.host, pid, prefix)
        if workers == 0:
            raise UnsupportedError(
                f"disk: no {prefix}-N worker threads in bhyve process {pid}", field="disk"
            )
        return {"disk": disk, "threads": prefix, **totals}

    # -- snapshots ---------------------------------------------------------------------

    async def datasets_of(guest: Guest) -> list[str]:
        out: list[str] = []
        for d in guest.domain.disks:
            if d.source is None or d.device != "disk":
                continue
            ds = await disks.backend_for(daemon.host, zfs, d.source).dataset()
            if ds is None:
                raise UnsupportedError(
                    f"disk {d.target}: {d.source} is neither a zvol nor in a ZFS dataset",
                    field="disk",
                )
            if ds not in out:
                out.append(ds)
        if not out:
            raise UnsupportedError(f"guest {guest.domain.name} has no disks", field="disk")
        return out

    async def frozen_snapshot(guest: Guest, names: list[str]) -> bool:
        """Take *names* at once; with a running guest's agent, inside freeze/thaw.
        Returns whether the guest was frozen (a consistent, not crash-consistent copy)."""
        frozen = False
        ga = None
        if guest.actor.state is lc.State.RUNNING and _has_agent(guest):
            ga = agent_for(daemon, guest)
            try:
                await ga.fsfreeze_freeze()
                frozen = True
            except GuestAgentError:
                ga = None  # no agent answering: crash-consistent
        try:
            await zfs.snapshot(names)
        finally:
            if ga is not None:
                with trio.CancelScope(shield=True):
                    await ga.fsfreeze_thaw()
        return frozen

    @method("domain.snapshot_create", access="rw")
    async def snapshot_create(
        ctx: CallContext, snapshot: str, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """A disk-only snapshot of every disk's zvol or dataset, taken at once (with
        the agent, between freeze and thaw)."""
        zfsparse.check_snapshot_component(snapshot)
        g = daemon.lookup(name, uuid)
        sets = await datasets_of(g)
        frozen = await frozen_snapshot(g, [f"{ds}@{snapshot}" for ds in sets])
        return {"snapshot": snapshot, "datasets": sets, "consistent": frozen}

    @method("domain.snapshot_list", access="ro")
    async def snapshot_list(
        ctx: CallContext, name: str | None = None, uuid: str | None = None
    ) -> list[dict[str, Any]]:
        """The snapshots of the guest's disks' datasets, oldest first."""
        g = daemon.lookup(name, uuid)
        out: list[dict[str, Any]] = []
        for ds in await datasets_of(g):
            out += [{"dataset": ds, **s} for s in await zfs.snapshots(ds)]
        return out

    def require_stopped(g: Guest, what: str) -> None:
        if g.actor.state.active:
            raise InvalidStateError(
                f"guest {g.domain.name} is {g.actor.state.value}; {what} needs it stopped"
            )

    @method("domain.snapshot_revert", access="rw")
    async def snapshot_revert(
        ctx: CallContext, snapshot: str, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """Roll every disk back to *snapshot* (newer snapshots are destroyed). The guest
        must be stopped: bhyve holds its disks open."""
        zfsparse.check_snapshot_component(snapshot)
        g = daemon.lookup(name, uuid)
        require_stopped(g, "a revert")
        sets = await datasets_of(g)
        for ds in sets:
            await zfs.rollback(f"{ds}@{snapshot}")
        return {"snapshot": snapshot, "datasets": sets}

    @method("domain.snapshot_delete", access="rw")
    async def snapshot_delete(
        ctx: CallContext, snapshot: str, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """Destroy *snapshot* of every disk's dataset (the disks keep their data)."""
        zfsparse.check_snapshot_component(snapshot)
        g = daemon.lookup(name, uuid)
        sets = await datasets_of(g)
        for ds in sets:
            await zfs.destroy(f"{ds}@{snapshot}")
        return {"snapshot": snapshot, "datasets": sets}

    # -- jobs --------------------------------------------------------------------------

    async def pivot(g: Guest, index: int, dest: str) -> None:
        disks = list(g.domain.disks)
        disks[index] = attrs.evolve(disks[index], source=dest)
        domain = attrs.evolve(g.domain, disks=tuple(disks))
        daemon.store.save(domain)
        g.domain = domain
        daemon.bus.publish("guest.defined", name=domain.name, replaced=True)

    def start_job(kind: str, g: Guest, disk: str, body: Any, unit: str = "bytes") -> dict[str, Any]:
        if jobs.active(g.domain.name, disk) is not None:
            raise InvalidStateError(f"disk {disk} of {g.domain.name} already has a job running")
        return jobs.start(kind, g.domain.name, disk, body, unit).info()

    async def copy_file(job: Job, src: str, dst: str, bandwidth: int | None, durable: bool) -> int:
        cancel = threading.Event()
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        last = 0.0

        def report(done: int, total: int) -> None:
            # Each report wakes the event loop: a few dozen a second is what a progress
            # bar (and job.get) can use, and what the copy can afford.
            nonlocal last
            now = time.monotonic()
            if done in (0, total) or now - last >= COPY_REPORT_INTERVAL:
                last = now
                token.run_sync_soon(job.progress, done, total)

        def work() -> int:
            try:
                return copymod.sparse_copy(
                    src, dst, progress=report, cancel=cancel, bandwidth=bandwidth, durable=durable
                )
            finally:
                token.run_sync_soon(finished.set)

        try:
            return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        except trio.Cancelled:
            # Stop the thread at its next chunk and wait until it removed the partial copy.
            cancel.set()
            with trio.CancelScope(shield=True):
                await finished.wait()
            raise

    @method("domain.block_copy", access="rw")
    async def block_copy(
        ctx: CallContext,
        disk: str,
        dest: str,
        pivot_to_copy: bool = False,
        bandwidth: int | None = None,
        sync: bool = False,
        name: str | None = None,
        uuid: str | None = None,
    ) -> dict[str, Any]:
        """Copy a disk to *dest* as a job (``job.progress`` events; ``job.cancel``).

        Files copy sparse to the new file *dest*. Zvols copy with ``zfs send | zfs
        receive`` to the new volume *dest* (``/dev/zvol/POOL/NAME``). A running guest's
        disk is copied from a ZFS snapshot (taken between freeze and thaw when it has an
        agent); a running guest's plain file (not on ZFS) cannot be copied consistently
        and is refused. With *pivot_to_copy* the definition then names the copy (used
        from the next start). *bandwidth* limits the copy to that many MiB/s.

        Durability: a file copy is durable (the file and its directory entry fsynced
        before the job completes) with *sync*, and always with *pivot_to_copy*: the
        guest will write to the copy and the source may be dropped, so the definition
        never names a copy a crash could lose. A plain copy without *sync* is like
        ``cp``: complete in the page cache, written back by the kernel. A zvol copy is
        durable either way (``zfs receive`` ends with its transaction group on disk).
        The result's ``durable`` says which it was.
        """
        if bandwidth is not None and bandwidth <= 0:
            raise InvalidValueError(
                f"bandwidth: must be > 0 MiB/s, got {bandwidth}", field="bandwidth"
            )
        rate = bandwidth << 20 if bandwidth is not None else None
        g = daemon.lookup(name, uuid)
        index, d = disks.find_disk(g.domain, disk)
        assert d.source is not None
        src = disks.backend_for(daemon.host, zfs, d.source)
        running = g.actor.state.active
        if isinstance(src, disks.ZvolDisk):
            target = zfsparse.dataset_of_device(dest)
            if target is None:
                raise InvalidValueError(
                    f"dest: a zvol copies to /dev/zvol/POOL/NAME, got {dest!r}", field="dest"
                )
            zfsparse.check_dataset(target, "dest")
            if await zfs.exists(target):
                raise InvalidValueError(f"dest: {target} already exists", field="dest")

            async def zvol_body(job: Job) -> dict[str, Any]:
                snap = f"{src.volume}@bhyvesup-copy-{job.id}"
                frozen = await frozen_snapshot(g, [snap])
                try:
                    total = zfsparse.size(
                        (await zfs.get([snap], ["referenced"]))[snap].get("referenced")
                    )
                    job.progress(0, total or 0, force=True)
                    try:
                        moved = await zfs.send_receive(
                            snap, target, progress=job.progress, bandwidth=rate
                        )
                    except BaseException:
                        with trio.CancelScope(shield=True):
                            if await zfs.exists(target):
                                await zfs.destroy(target, recursive=True)
                        raise
                    job.progress(moved, max(moved, job.total), force=True)
                    await zfs.destroy(f"{target}@bhyvesup-copy-{job.id}")
                finally:
                    with trio.CancelScope(shield=True):
                        await zfs.destroy(snap)
                if pivot_to_copy:
                    await pivot(g, index, dest)
                return {
                    "dest": dest,
                    "bytes": moved,
                    "consistent": frozen or not running,
                    "durable": True,
                }

            return start_job("copy", g, disk, zvol_body)

        local_dest = daemon.host.path(dest)
        if not dest.startswith("/"):
            raise InvalidValueError(f"dest: must be an absolute path, got {dest!r}", field="dest")
        if os.path.lexists(local_dest):
            raise InvalidValueError(f"dest: {dest} already exists", field="dest")
        if not os.path.isdir(os.path.dirname(local_dest)):
            raise InvalidValueError(
                f"dest: directory {os.path.dirname(dest)} does not exist", field="dest"
            )
        dataset = await src.dataset() if running else None
        if running and dataset is None:
            raise UnsupportedError(
                f"disk: guest {g.domain.name} is running and {d.source} is not in a ZFS "
                "dataset, so no consistent copy can be taken; stop the guest first",
                field="disk",
            )

        # A copy the definition will name must survive a crash before it does.
        durable = sync or pivot_to_copy

        async def file_body(job: Job) -> dict[str, Any]:
            if dataset is None:
                moved = await copy_file(job, src.local_path, local_dest, rate, durable)
                frozen = False
            else:
                # Copy from a clone of a snapshot: the running guest keeps writing.
                snap = f"{dataset}@bhyvesup-copy-{job.id}"
                clone = f"{dataset}-bhyvesup-copy-{job.id}"
                frozen = await frozen_snapshot(g, [snap])
                try:
                    await zfs.clone(snap, clone)
                    try:
                        mnt = await src.mountpoint()
                        cmnt = (await zfs.get([clone], ["mountpoint"]))[clone]["mountpoint"]
                        assert mnt is not None
                        rel = os.path.relpath(src.local_path, mnt)
                        moved = await copy_file(
                            job, os.path.join(cmnt, rel), local_dest, rate, durable
                        )
                    finally:
                        with trio.CancelScope(shield=True):
                            await zfs.destroy(clone)
                finally:
                    with trio.CancelScope(shield=True):
                        await zfs.destroy(snap)
            job.progress(moved, force=True)
            if pivot_to_copy:
                await pivot(g, index, dest)
            return {
                "dest": dest,
                "bytes": moved,
                "consistent": frozen or not running,
                "durable": durable,
            }

        return start_job("copy", g, disk, file_body)

    @method("domain.block_pull", access="rw")
    async def block_pull(
        ctx: CallContext, disk: str, name: str | None = None, uuid: str | None = None
    ) -> dict[str, Any]:
        """Make a disk's zvol or dataset independent of the snapshot it was cloned from
        (``zfs promote``: the origin's earlier snapshots move to it, and the old base
        becomes the dependent one and can be destroyed). A job."""
        g = daemon.lookup(name, uuid)
        b = backend(g, disk)
        ds = await b.dataset()
        if ds is None:
            raise UnsupportedError(f"disk: {b.source} is not on ZFS", field="disk")
        origin = (await zfs.get([ds], ["origin"]))[ds].get("origin", "-")
        if origin in ("-", ""):
            raise InvalidValueError(f"disk: {ds} is not a clone; nothing to pull", field="disk")

        async def body(job: Job) -> dict[str, Any]:
            job.progress(0, 1, force=True)
            await zfs.promote(ds)
            job.progress(1, 1, force=True)
            return {"dataset": ds, "former_origin": origin}

        return start_job("pull", g, disk, body, "steps")

    @method("domain.block_commit", access="rw")
    async def block_commit(
        ctx: CallContext,
        disk: str,
        base: str | None = None,
        name: str | None = None,
        uuid: str | None = None,
    ) -> dict[str, Any]:
        """Fold the guest's changes into its base, in ZFS terms. A job.

        With *base* (a snapshot of the disk's own zvol/dataset): the overlay "changes
        since @base" is committed by destroying ``@base``; the current data stays (the
        inverse, discarding them, is ``domain.snapshot_revert``).

        Without *base*, the disk must be a clone of ``BASE@snap`` and the guest stopped:
        ``zfs promote`` the clone, destroy the old base (now the dependent one), rename
        the clone to the base's name, and point the definition at it. The guest's data
        then lives under the base's name.
        """
        g = daemon.lookup(name, uuid)
        index, d = disks.find_disk(g.domain, disk)
        assert d.source is not None
        b = disks.backend_for(daemon.host, zfs, d.source)
        ds = await b.dataset()
        if ds is None:
            raise UnsupportedError(f"disk: {b.source} is not on ZFS", field="disk")
        if base is not None:
            zfsparse.check_snapshot_component(base, "base")
            snap = f"{ds}@{base}"
            if not await zfs.exists(snap):
                raise InvalidValueError(f"base: {snap} does not exist", field="base")

            async def body(job: Job) -> dict[str, Any]:
                job.progress(0, 1, force=True)
                await zfs.destroy(snap)
                job.progress(1, 1, force=True)
                return {"dataset": ds, "committed": base}

            return start_job("commit", g, disk, body, "steps")

        require_stopped(g, "a commit into the base")
        origin = (await zfs.get([ds], ["origin"]))[ds].get("origin", "-")
        if origin in ("-", ""):
            raise InvalidValueError(
                f"disk: {ds} is not a clone, so it has no base; give base=SNAPSHOT to "
                "commit the changes since a snapshot",
                field="disk",
            )
        base_ds = origin.split("@", 1)[0]
        for other in daemon.guests.values():
            if other is g:
                continue
            for od in other.domain.disks:
                if od.source is None:
                    continue
                if await disks.backend_for(daemon.host, zfs, od.source).dataset() == base_ds:
                    raise InvalidStateError(
                        f"disk: the base {base_ds} is also used by guest {other.domain.name}",
                        field="disk",
                    )
        old_mnt = await b.mountpoint() if isinstance(b, disks.FileDisk) else None

        async def clone_body(job: Job) -> dict[str, Any]:
            job.progress(0, 3, force=True)
            await zfs.promote(ds)
            job.progress(1, 3, force=True)
            await zfs.destroy(base_ds, recursive=True)
            job.progress(2, 3, force=True)
            await zfs.rename(ds, base_ds)
            if isinstance(b, disks.ZvolDisk):
                new_source = zfsparse.volume_path(base_ds)
            else:
                assert old_mnt is not None
                mnt = (await zfs.get([base_ds], ["mountpoint"]))[base_ds]["mountpoint"]
                new_source = daemon.host.unpath(
                    os.path.join(mnt, os.path.relpath(b.local_path, old_mnt))
                )
            await pivot(g, index, new_source)
            job.progress(3, 3, force=True)
            return {"dataset": base_ds, "source": new_source, "former_clone": ds}

        return start_job("commit", g, disk, clone_body, "steps")

    @method("job.list", access="ro")
    async def job_list(ctx: CallContext) -> list[dict[str, Any]]:
        """Every job, running and recently finished."""
        return [j.info() for j in jobs.jobs.values()]

    @method("job.get", access="ro")
    async def job_get(ctx: CallContext, id: int) -> dict[str, Any]:
        """One job."""
        return jobs.get(id).info()

    @method("job.cancel", access="rw")
    async def job_cancel(ctx: CallContext, id: int, wait: bool = True) -> dict[str, Any]:
        """Cancel a running job; its partial result is removed."""
        job = jobs.cancel(id)
        if wait:
            with trio.move_on_after(30):
                await job.finished.wait()
        return job.info()
