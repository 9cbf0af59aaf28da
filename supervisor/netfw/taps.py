"""Each guest's taps: named at plan time, created before launch, destroyed at final stop.

Theory of operation
===================

Tap names must be in bhyve's argv, which the daemon builds before the launch hooks
run, so names are *allocated* by :meth:`TapHook.resolver` (called from the plan) and
*created* by :meth:`TapHook.before_launch`. Allocation is deterministic: the lowest
``tapN`` not held by another guest in the table and not present on the host when last
looked. The table (guest → NIC index → tap) lives in ``RUN_DIR/taps.json``, written
atomically, so it survives a daemon restart: :func:`owned_taps` tells which taps a
running guest holds, and they are never taken for leftovers.

Every tap the daemon creates carries the description ``bhyvesupd guest NAME nic I``.
Before each launch the hook makes sure the tap exists, is UP and is a member of its
bridge (``ifconfig tapN create description ... up``, ``ifconfig BRIDGE addm tapN``);
each step is skipped when already done, so a reboot changes nothing. After the final
stop it removes the tap from its bridge and destroys it. Bridges are never touched
beyond ``addm``/``deletem``: adding the first tap or removing the last does not bounce
their link. At daemon start :meth:`TapHook.sweep` removes the taps of guests that are
not running (leftovers of a crash).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Protocol

from supervisor._fsutil import write_atomic
from supervisor.actors.guest import LaunchPlan
from supervisor.domain.model import Interface
from supervisor.errors import HostNotReadyError, SupervisorError
from supervisor.host import Host
from supervisor.log import get_logger
from supervisor.netfw.ifparse import IfInfo, parse_ifconfig
from supervisor.vmm.hostexec import run_tool
from supervisor.vmm.platform.procwatch import pid_alive

log = get_logger("bhyvesupd.taps")

TABLE_FILE = "taps.json"
_DESC_RE = re.compile(r"bhyvesupd guest (\S+) nic (\d+)")


def description(guest: str, index: int) -> str:
    """The description the daemon gives the tap of *guest*'s NIC *index*."""
    return f"bhyvesupd guest {guest} nic {index}"


def owner_of(info: IfInfo) -> tuple[str, int] | None:
    """(guest, NIC index) of a tap the daemon created, from its description."""
    m = _DESC_RE.fullmatch(info.description or "")
    return (m.group(1), int(m.group(2))) if m else None


def _table_path(host: Host, run_dir: str) -> str:
    return host.path(f"{run_dir}/{TABLE_FILE}")


def load_table(host: Host, run_dir: str) -> dict[str, dict[str, str]]:
    """guest → {NIC index: tap}; empty when missing or unreadable."""
    try:
        with open(_table_path(host, run_dir), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(g): {str(k): str(v) for k, v in nics.items()} for g, nics in data.items()}


def owned_taps(host: Host, run_dir: str, guest: str) -> tuple[str, ...]:
    """The taps *guest* holds (for re-adopting a running guest after a restart)."""
    nics = load_table(host, run_dir).get(guest, {})
    return tuple(nics[k] for k in sorted(nics, key=int))


def guest_alive(host: Host, pid_file: str) -> bool:
    """Whether the bhyve whose pid is in *pid_file* (a FreeBSD path) still runs."""
    try:
        with open(host.path(pid_file), encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return False
    return pid > 0 and pid_alive(pid)


class BridgeSource(Protocol):
    """Where a ``type='network'`` NIC's bridge comes from (the network manager)."""

    def bridge_for(self, network: str, field: str) -> str: ...

    async def ensure_lease(self, network: str, mac: str, guest: str) -> None: ...


def _uses_tap(nic: Interface) -> bool:
    return nic.type in ("bridge", "network")


class TapHook:
    """Creates and destroys guests' taps (a LaunchHook)."""

    def __init__(self, host: Host, run_dir: str, networks: BridgeSource) -> None:
        self.host = host
        self.run_dir = run_dir
        self.networks = networks
        self.table = load_table(host, run_dir)
        #: Interface names seen on the host at the last ifconfig.
        self.seen: set[str] = set()

    def _save(self) -> None:
        write_atomic(
            _table_path(self.host, self.run_dir),
            (json.dumps(self.table, indent=1, sort_keys=True) + "\n").encode(),
        )

    def _allocate(self, guest: str, index: int) -> str:
        nics = self.table.setdefault(guest, {})
        if str(index) in nics:
            return nics[str(index)]
        used = {t for g in self.table.values() for t in g.values()} | self.seen
        n = 0
        while f"tap{n}" in used:
            n += 1
        nics[str(index)] = f"tap{n}"
        self._save()
        return nics[str(index)]

    def resolver(self, guest: str) -> Callable[[int, Interface], str]:
        """The argv builder's tap resolver for *guest*: its NIC's ``target dev`` when
        the definition names one, else the allocated ``tapN``."""

        def resolve(index: int, nic: Interface) -> str:
            return nic.target_dev or self._allocate(guest, index)

        return resolve

    def taps_of(self, guest: str) -> tuple[str, ...]:
        """The taps allocated to *guest* (in NIC order)."""
        nics = self.table.get(guest, {})
        return tuple(nics[k] for k in sorted(nics, key=int))

    async def _ifconfig(self) -> dict[str, IfInfo]:
        r = await run_tool(self.host, ["ifconfig"], check=True, timeout=30)
        ifs = parse_ifconfig(r.stdout)
        self.seen = set(ifs)
        return ifs

    async def _run(self, *argv: str) -> None:
        await run_tool(self.host, list(argv), check=True, timeout=30)

    async def before_launch(self, name: str, plan: LaunchPlan) -> None:
        domain = plan.domain
        if domain is None or not any(_uses_tap(n) for n in domain.interfaces):
            return
        ifs = await self._ifconfig()
        for i, nic in enumerate(domain.interfaces):
            if not _uses_tap(nic):
                continue
            field = f"devices.interface[{i}]"
            tap = nic.target_dev or self.table.get(name, {}).get(str(i)) or self._allocate(name, i)
            if nic.type == "network":
                assert nic.network is not None
                bridge = self.networks.bridge_for(nic.network, f"{field}.source.network")
            else:
                assert nic.bridge is not None
                bridge = nic.bridge
            if bridge not in ifs:
                raise HostNotReadyError(
                    f"{field}.source.bridge: bridge {bridge} does not exist (ifconfig bridge "
                    f'create name {bridge}, or cloned_interfaces="{bridge}" in rc.conf)',
                    field=f"{field}.source.bridge",
                )
            info = ifs.get(tap)
            if info is None:
                await self._run(
                    "ifconfig", tap, "create", "description", description(name, i), "up"
                )
                log.info("tap_created", guest=name, tap=tap, bridge=bridge)
            else:
                mine = owner_of(info)
                if nic.target_dev is None and mine is not None and mine[0] != name:
                    raise HostNotReadyError(
                        f"{field}: {tap} belongs to guest {mine[0]}", field=field
                    )
                if nic.target_dev is None and mine is None:
                    # Someone else's tap appeared since we chose the name: choose again at
                    # the next start.
                    self.table.get(name, {}).pop(str(i), None)
                    self._save()
                    raise HostNotReadyError(
                        f"{field}: {tap} already exists and is not bhyvesupd's; start again",
                        field=field,
                    )
                if not info.up:
                    await self._run("ifconfig", tap, "up")
            for other, oinfo in ifs.items():
                if other != bridge and tap in oinfo.members:
                    await self._run("ifconfig", other, "deletem", tap)
            if tap not in ifs[bridge].members:
                await self._run("ifconfig", bridge, "addm", tap)
            if nic.type == "network" and nic.mac is not None:
                assert nic.network is not None
                await self.networks.ensure_lease(nic.network, nic.mac, name)

    async def _remove(self, ifs: dict[str, IfInfo], tap: str, *, destroy: bool) -> None:
        for bridge, info in ifs.items():
            if tap in info.members:
                await self._run("ifconfig", bridge, "deletem", tap)
        if destroy and tap in ifs:
            await self._run("ifconfig", tap, "destroy")
            self.seen.discard(tap)

    async def after_stop(self, name: str, plan: LaunchPlan) -> None:
        allocated = set(self.taps_of(name))
        named = {
            n.target_dev for n in (plan.domain.interfaces if plan.domain else ()) if n.target_dev
        }
        if not allocated and not named:
            return
        ifs = await self._ifconfig()
        for tap in sorted(allocated | named):
            info = ifs.get(tap)
            if info is None:
                continue
            ours = owner_of(info)
            await self._remove(ifs, tap, destroy=ours is not None and ours[0] == name)
            log.info("tap_removed", guest=name, tap=tap)
        if self.table.pop(name, None) is not None:
            self._save()

    async def sweep(self, alive: Callable[[str], bool]) -> list[str]:
        """Remove the taps of guests that are not running: leftovers of a crash.

        *alive* tells whether a guest is running (its taps are kept). Returns the taps
        destroyed.
        """
        try:
            ifs = await self._ifconfig()
        except SupervisorError as exc:
            log.warning("tap_sweep_failed", error=str(exc))
            return []
        removed: list[str] = []
        for tap, info in sorted(ifs.items()):
            who = owner_of(info)
            if who is None or alive(who[0]):
                continue
            try:
                await self._remove(ifs, tap, destroy=True)
            except SupervisorError as exc:
                log.warning("leftover_tap_not_removed", tap=tap, error=str(exc))
                continue
            removed.append(tap)
            log.info("leftover_tap_removed", tap=tap, guest=who[0])
        stale = [g for g in self.table if not alive(g)]
        for g in stale:
            del self.table[g]
        if stale:
            self._save()
        return removed


def nic_taps(nics: Iterable[Interface]) -> list[int]:
    """Indices of the NICs that need a tap."""
    return [i for i, n in enumerate(nics) if _uses_tap(n)]
