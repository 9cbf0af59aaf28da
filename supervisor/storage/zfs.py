"""ZFS through ``zfs(8)``: the commands the storage calls need, with typed failures.

The host's ``zfs`` comes from :meth:`Host.tool`, so a simulated host uses its simulated
``zfs`` (zvols) or a real one (zfs-fuse) it was given. Numbers are read with ``zfs get
-H -p`` (see :mod:`supervisor.storage.zfsparse`). When OpenZFS's ``libzfs_core`` Python
module is importable, :meth:`ZfsCli.snapshot` of several datasets uses ``lzc_snapshot``,
which takes them in one transaction group (``zfs snapshot a@s b@s`` does too on OpenZFS,
but not on every zfs(8)); everything else stays on the CLI.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import Any

import trio

from supervisor.errors import HostToolError, InvalidValueError
from supervisor.host import Host
from supervisor.storage import zfsparse
from supervisor.vmm.hostexec import resolve_argv, run_tool, tool_env

#: Seconds for a metadata command (snapshot, clone, get); sends run without a limit.
ZFS_TIMEOUT = 120.0


def load_lzc() -> ModuleType | None:
    """OpenZFS's ``libzfs_core`` module (pyzfs), or ``None`` when not installed."""
    try:
        return importlib.import_module("libzfs_core")
    except Exception:  # not installed, or its C library is missing
        return None


class DatasetNotFoundError(InvalidValueError):
    """The named dataset, volume or snapshot does not exist."""


class ZfsCli:
    """``zfs(8)`` on *host*."""

    def __init__(self, host: Host, lzc: ModuleType | None = None) -> None:
        self.host = host
        self.lzc = lzc

    async def run(self, *args: str, timeout: float = ZFS_TIMEOUT) -> str:
        argv = ["zfs", *args]
        r = await run_tool(self.host, argv, timeout=timeout)
        if not r.ok:
            err = (r.stderr or r.stdout).strip()
            if "does not exist" in err:
                raise DatasetNotFoundError(err.splitlines()[0], field="dataset")
            raise HostToolError(
                f"{' '.join(argv)} failed with status {r.status}: {err[:500]}",
                argv=argv,
                status=r.status,
                stderr=err,
            )
        return r.stdout

    async def get(self, names: list[str], props: list[str]) -> dict[str, dict[str, str]]:
        return zfsparse.parse_get(await self.run(*zfsparse.get_argv(names, props)[1:]))

    async def exists(self, name: str) -> bool:
        try:
            await self.get([name], ["type"])
        except DatasetNotFoundError:
            return False
        return True

    async def snapshots(self, dataset: str) -> list[dict[str, Any]]:
        """*dataset*'s own snapshots, oldest first: name, used, referenced, creation."""
        names = [
            n
            for n in zfsparse.parse_names(
                await self.run("list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset)
            )
            if n.split("@", 1)[0] == dataset
        ]
        if not names:
            return []
        props = await self.get(names, ["used", "referenced", "creation"])
        out = [
            {
                "name": n.split("@", 1)[1],
                "used": zfsparse.size(props[n].get("used")),
                "referenced": zfsparse.size(props[n].get("referenced")),
                "creation": zfsparse.size(props[n].get("creation")),
            }
            for n in names
        ]
        out.sort(key=lambda s: s["creation"] or 0)
        return out

    async def snapshot(self, snapshots: list[str]) -> None:
        """Take *snapshots* (``ds@name`` each) at once."""
        if self.lzc is not None and len(snapshots) > 1:
            await trio.to_thread.run_sync(self.lzc.lzc_snapshot, [s.encode() for s in snapshots])
            return
        await self.run("snapshot", *snapshots)

    async def destroy(self, name: str, *, recursive: bool = False) -> None:
        # zfs-fuse (and a FreeBSD dataset someone has cd'ed into) says "dataset is
        # busy" while a filesystem is mounted: unmount the one named, then try again.
        for _ in range(16):
            try:
                await self.run("destroy", *(["-r"] if recursive else []), name)
                return
            except HostToolError as e:
                m = re.search(r"cannot destroy '([^']+)': dataset is busy", e.stderr)
                if m is None:
                    raise
                try:
                    await self.run("unmount", "-f", m.group(1))
                except HostToolError as u:
                    if "not currently mounted" not in u.stderr:
                        raise
                    await trio.sleep(0.2)  # zfs-fuse lets go of an unmounted one late
        await self.run("destroy", *(["-r"] if recursive else []), name)

    async def rollback(self, snapshot: str) -> None:
        # -r: newer snapshots go, as a revert to an older snapshot means.
        await self.run("rollback", "-r", snapshot)

    async def clone(self, snapshot: str, target: str) -> None:
        await self.run("clone", snapshot, target)

    async def promote(self, name: str) -> None:
        await self.run("promote", name)

    async def rename(self, old: str, new: str) -> None:
        try:
            await self.run("rename", old, new)
        except HostToolError as e:
            # zfs-fuse cannot rename a mounted filesystem: unmount, rename, mount.
            if "busy" not in e.stderr:
                raise
            await self.run("unmount", "-f", old)
            # zfs-fuse lets go of an unmounted filesystem late (more so on a busy host):
            # "busy" right after the unmount is worth a few more tries.
            for _ in range(25):
                try:
                    await self.run("rename", old, new)
                    break
                except HostToolError as again:
                    if "busy" not in again.stderr:
                        raise
                    await trio.sleep(0.2)
            else:
                await self.run("rename", old, new)
            await self.run("mount", new)

    async def create_volume(self, name: str, size: int, *, sparse: bool = True) -> None:
        await self.run(
            "create", *(["-s"] if sparse else []), "-V", str(size), "-o", "volmode=dev", name
        )

    async def send_receive(
        self,
        snapshot: str,
        target: str,
        progress: Any = None,
        chunk: int = 1 << 20,
        bandwidth: int | None = None,
    ) -> int:
        """``zfs send SNAPSHOT | zfs receive TARGET``, pumped through this process so
        that the bytes moved are counted (``progress(n)`` after each chunk).

        Returns the stream's length. On cancellation both processes are killed.
        With *bandwidth* (bytes per second) the stream is paced.
        """
        env = tool_env(self.host)
        send = await trio.lowlevel.open_process(
            resolve_argv(self.host, ["zfs", "send", snapshot]),
            stdout=-1,
            stderr=-1,
            env=env,
        )
        recv = await trio.lowlevel.open_process(
            resolve_argv(self.host, ["zfs", "receive", target]),
            stdin=-1,
            stderr=-1,
            env=env,
        )
        total = 0
        began = trio.current_time()
        try:
            assert send.stdout is not None
            assert recv.stdin is not None
            async with recv.stdin:
                while data := await send.stdout.receive_some(chunk):
                    await recv.stdin.send_all(data)
                    total += len(data)
                    if progress is not None:
                        progress(total)
                    if bandwidth:
                        await trio.sleep_until(began + total / bandwidth)
            s_status, r_status = await send.wait(), await recv.wait()
        except BaseException:
            for p in (send, recv):
                if p.returncode is None:
                    p.kill()
            with trio.CancelScope(shield=True):
                await send.wait()
                await recv.wait()
            raise
        finally:
            for p in (send, recv):
                if p.stdout is not None:
                    await p.stdout.aclose()
        if s_status or r_status:
            errs = []
            for p in (send, recv):
                assert p.stderr is not None
                errs.append((await p.stderr.receive_some(4096)).decode(errors="replace").strip())
            raise HostToolError(
                f"zfs send {snapshot} | zfs receive {target} failed "
                f"(status {s_status}/{r_status}): {' '.join(e for e in errs if e)[:500]}",
                argv=["zfs", "send", snapshot],
                status=s_status or r_status,
            )
        for p in (send, recv):
            if p.stderr is not None:
                await p.stderr.aclose()
        return total
