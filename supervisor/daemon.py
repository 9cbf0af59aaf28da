"""bhyvesupd: the daemon.

It reads its configuration, finds out what this bhyve can do (libvirt's probe), loads
every guest definition, serves the JSON-RPC bus on a Unix socket and runs one actor per
guest. Signals: SIGTERM and SIGINT stop the daemon (guests keep running unless
``daemon.on_stop = "shutdown"``, or the request that stops it asks for it); SIGHUP
re-reads the definitions and says what changed, without touching running guests.

``bhyvesupd --sim DIR`` runs the very same daemon against the simulated FreeBSD host
rooted at DIR, with the example guests from ``etc/examples`` defined and started.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import trio

from supervisor import __version__
from supervisor import log as logsetup
from supervisor._record import Record
from supervisor.actors import lifecycle as lc
from supervisor.actors.guest import GuestActor, GuestPaths, LaunchHook, LaunchPlan
from supervisor.config import Config, group_id, load_config
from supervisor.domain.model import Domain
from supervisor.errors import (
    ConfigError,
    GuestExistsError,
    GuestNotFoundError,
    InvalidStateError,
    SupervisorError,
)
from supervisor.events import EventBus
from supervisor.host import FREEBSD, VMM_DIR, Host
from supervisor.netfw.manager import NetworkManager
from supervisor.netfw.taps import TapHook, guest_alive
from supervisor.passthru.hook import PassthruHook
from supervisor.store import CACHE_FILE, DefinitionStore, source_stamp
from supervisor.vmm import caps as capsmod
from supervisor.vmm.argv import build_commands
from supervisor.vmm.hostexec import run_tool, tool_env
from supervisor.vmm.nvram import NvramHook
from supervisor.vmm.platform import consolepair

log = logsetup.get_logger("bhyvesupd")

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "etc" / "examples"


#: How long autostart waits for a dependency to be ready before starting anyway.
DEPENDENCY_WAIT = 120.0

#: How long the end of autostart waits for progress: once no starting guest has come
#: up (or failed) for this long, autostart counts as done.
AUTOSTART_STALL = 60.0


class _StartedGroup:
    """Many tasks' ``task_status``: :meth:`wait` returns once every member has started."""

    def __init__(self) -> None:
        self._pending = 0
        self._done = trio.Event()

    def member(self) -> _Started:
        self._pending += 1
        return _Started(self)

    def _one_started(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._done.set()

    async def wait(self) -> None:
        if self._pending:
            await self._done.wait()


class _Started:
    """One member's ``task_status`` (counted once, however often it is called)."""

    __slots__ = ("_counted", "_group")

    def __init__(self, group: _StartedGroup) -> None:
        self._group = group
        self._counted = False

    def started(self, value: None = None) -> None:
        if not self._counted:
            self._counted = True
            self._group._one_started()


def _listdir(path: str) -> list[str]:
    """The entries of *path*; none when it does not exist."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def policy_of(domain: Domain) -> lc.Policy:
    """The lifecycle policy a definition asks for (libvirt's actions + our metadata)."""
    p = domain.policy
    on_crash = {
        "restart": lc.OnCrash.RESTART,
        "rename-restart": lc.OnCrash.RESTART,
        "coredump-restart": lc.OnCrash.RESTART,
        "preserve": lc.OnCrash.PRESERVE,
    }.get(domain.on_crash, lc.OnCrash.DESTROY)
    return lc.Policy(
        on_reboot=lc.OnReboot.DESTROY if domain.on_reboot == "destroy" else lc.OnReboot.RESTART,
        on_poweroff=lc.OnPoweroff.RESTART
        if domain.on_poweroff == "restart"
        else lc.OnPoweroff.DESTROY,
        on_crash=on_crash,
        restart_backoff=p.restart_backoff,
        restart_backoff_max=p.restart_backoff_max,
        crash_limit=p.crash_limit,
        crash_window=p.crash_window,
        stop_timeout=p.stop_timeout,
    )


@attrs.define(eq=False, repr=False)
class Guest(Record):
    """A defined guest: its definition and its actor."""

    domain: Domain
    actor: GuestActor
    cancel: trio.CancelScope = attrs.field(factory=trio.CancelScope)


class Daemon:
    """The daemon's state: guests, definitions, the event bus.

    Args:
        config: the configuration.
        host: the host guests run on (real or simulated).
        caps: what this host's bhyve can do.
    """

    def __init__(self, config: Config, host: Host, caps: capsmod.Capabilities) -> None:
        self.config = config
        self.host = host
        self.caps = caps
        # Probed once at start: named once, not at every daemon.status a client polls.
        self._cap_names = sorted(str(f.name) for f in capsmod.BhyveCap if f and caps.has(f))
        self.bus = EventBus()
        self.store = definition_store(host, config)
        self.paths = GuestPaths(config.guests.run_dir, config.guests.log_dir)
        #: One environment for every guest's bhyve and loader.
        self.tool_env = tool_env(host)
        self.guests: dict[str, Guest] = {}
        #: How many guests are in each state, kept as they change: daemon.status, which
        #: clients poll, and the wait for the end of autostart read it without walking
        #: every guest.
        self.state_counts: collections.Counter[lc.State] = collections.Counter()
        # The end of autostart (see _launches_done): set when the last starting guest
        # stops starting, while it waits; and when a guest last stopped starting.
        self._starting_drained: trio.Event | None = None
        self._start_progress_at = 0.0
        self.started_at = time.monotonic()
        self._nursery: trio.Nursery | None = None
        self.stopping = trio.Event()
        #: Set once the start-up autostart has launched every guest (or given up).
        self.autostarted = trio.Event()
        self.stop_guests_on_exit = config.daemon.on_stop == "shutdown"
        #: Host resources every guest acquires before launch and releases after its
        #: final stop (see :class:`~supervisor.actors.guest.LaunchHook`).
        self.launch_hooks: list[LaunchHook] = [NvramHook(host, config.guests.firmware_dir)]
        self.networks = NetworkManager(
            host, config.network, config.guests.run_dir, config.guests.log_dir
        )
        self.passthru = PassthruHook(
            host,
            lambda n: n in self.guests and self.guests[n].actor.state.active,
            lambda: [
                (n, g.domain)
                for n, g in self.guests.items()
                if g.actor.state in (lc.State.RUNNING, lc.State.STOPPING, lc.State.REBOOTING)
            ],
        )
        self.taps = TapHook(host, config.guests.run_dir, self.networks)
        self.launch_hooks += [self.passthru, self.taps]

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run *fn* as a task of the daemon (background jobs); it must not raise."""
        assert self._nursery is not None
        self._nursery.start_soon(fn)

    # -- guests ---------------------------------------------------------------------------

    def lookup(self, name: str | None = None, uuid: str | None = None) -> Guest:
        """The guest called *name* (or with *uuid*).

        Raises:
            GuestNotFoundError: no such guest.
        """
        if name is not None:
            guest = self.guests.get(name)
            if guest is None:
                raise GuestNotFoundError(f"no guest named {name!r}", field="name")
            return guest
        if uuid is not None:
            for guest in self.guests.values():
                if guest.domain.uuid is not None and guest.domain.uuid.lower() == uuid.lower():
                    return guest
            raise GuestNotFoundError(f"no guest with uuid {uuid!r}", field="uuid")
        raise GuestNotFoundError("give the guest's name or uuid", field="name")

    def _plan(self, name: str) -> LaunchPlan:
        domain = self.guests[name].domain
        map_path = f"{self.paths.run_dir}/{name}.device.map"
        commands = build_commands(
            domain,
            self.caps,
            device_map_path=map_path,
            loader_console=True,
            taps=self.taps.resolver(name),
        )
        consoles = domain.console_paths()
        return LaunchPlan(
            loader=commands.loader,
            bhyve=commands.bhyve,
            device_map=commands.device_map,
            device_map_path=map_path if commands.device_map is not None else None,
            console=consoles[0][2] if consoles else None,
            sockets=tuple(ch.path for ch in domain.channels),
            domain=domain,
        )

    def _make_actor(self, domain: Domain) -> GuestActor:
        consoles = domain.console_paths()
        g = self.config.guests
        name = domain.name
        return GuestActor(
            name,
            plan_factory=lambda: self._plan(name),
            policy=policy_of(domain),
            host=self.host,
            paths=self.paths,
            bus=self.bus,
            console_path=consoles[0][2] if consoles else None,
            mailbox_size=g.mailbox_size,
            console_ring=g.console_ring,
            console_log_max=g.console_log_max,
            console_log_keep=g.console_log_keep,
            hooks=self.launch_hooks,
            ready_regex=domain.policy.ready_console_regex,
            env=self.tool_env,
            on_state=self._count_state,
        )

    def _count_state(self, before: lc.State, after: lc.State) -> None:
        counts = self.state_counts
        counts[before] -= 1
        counts[after] += 1
        drained = self._starting_drained
        if before is lc.State.STARTING and drained is not None:
            self._start_progress_at = trio.current_time()
            if not counts[lc.State.STARTING]:
                drained.set()

    def _forget(self, guest: Guest) -> None:
        """Take a guest out of the daemon (its actor stops taking requests)."""
        del self.guests[guest.domain.name]
        self.state_counts[guest.actor.state] -= 1
        guest.actor.close()

    def _new_guest(self, domain: Domain) -> Guest:
        guest = Guest(domain, self._make_actor(domain))
        self.guests[domain.name] = guest
        self.state_counts[guest.actor.state] += 1
        return guest

    async def _run_actor(
        self, guest: Guest, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with guest.cancel:
            await guest.actor.run(task_status=task_status)

    async def _add(self, domain: Domain) -> Guest:
        assert self._nursery is not None
        guest = self._new_guest(domain)
        await self._nursery.start(self._run_actor, guest)
        return guest

    async def _add_all(self, domains: Iterable[Domain]) -> None:
        """:meth:`_add` for every one of *domains*: their actors' tasks start together and
        this waits once for all of them, not for each in turn (two task switches per
        guest at start-up)."""
        assert self._nursery is not None
        group = _StartedGroup()
        for domain in domains:
            self._nursery.start_soon(self._run_counted, self._new_guest(domain), group.member())
        await group.wait()

    async def _run_counted(self, guest: Guest, status: _Started) -> None:
        try:
            await self._run_actor(guest, status)
        finally:
            status.started()  # an actor that ended before starting must not be waited for

    async def define(self, xml: str | bytes) -> Guest:
        """Define a new guest or replace a definition (effective at the next start).

        Raises:
            InvalidValueError: the XML is invalid (the message names the field).
            GuestExistsError: another guest already has that UUID, or that name with
                another UUID.
        """
        from supervisor.domain.xml import parse_domain_xml

        domain = parse_domain_xml(xml.encode() if isinstance(xml, str) else xml, caps=self.caps)
        existing = self.guests.get(domain.name)
        for other in self.guests.values():
            if (
                other is not existing
                and domain.uuid is not None
                and other.domain.uuid == domain.uuid
            ):
                raise GuestExistsError(
                    f"guest {other.domain.name!r} already has uuid {domain.uuid}", field="uuid"
                )
        if existing is not None and existing.domain.uuid not in (None, domain.uuid):
            raise GuestExistsError(
                f"guest {domain.name!r} exists with uuid {existing.domain.uuid}", field="name"
            )
        self.store.save(domain)
        if existing is not None:
            existing.domain = domain
            existing.actor.machine.set_policy(policy_of(domain))
            existing.actor.ready_regex = domain.policy.ready_console_regex
            self.bus.publish("guest.defined", name=domain.name, replaced=True)
            return existing
        guest = await self._add(domain)
        self.bus.publish("guest.defined", name=domain.name, replaced=False)
        return guest

    async def undefine(self, guest: Guest) -> None:
        """Remove a stopped guest's definition.

        Raises:
            InvalidStateError: the guest is not stopped.
        """
        if guest.actor.state.active or guest.actor.state is lc.State.BACKOFF:
            raise InvalidStateError(
                f"guest {guest.domain.name} is {guest.actor.state.value}; stop it first"
            )
        self.store.remove(guest.domain.name)
        self._forget(guest)
        self.bus.publish("guest.undefined", name=guest.domain.name)

    async def set_autostart(self, guest: Guest, autostart: bool) -> None:
        domain = attrs.evolve(
            guest.domain, policy=attrs.evolve(guest.domain.policy, autostart=autostart)
        )
        self.store.save(domain)
        guest.domain = domain

    async def reload(self) -> dict[str, list[str]]:
        """Re-read the definitions directory and apply what changed.

        New guests are added (and started if autostart), removed files remove stopped
        guests, changed definitions take effect at each guest's next start. Running
        guests are never restarted.
        """
        domains, problems = self.store.load_all()
        report: dict[str, list[str]] = {
            "added": [],
            "removed": [],
            "changed": [],
            "unchanged": [],
            "kept": [],
            "errors": [],
        }
        for p in problems:
            report["errors"].append(f"{p.path}: {p.error}")
        for name, domain in domains.items():
            guest = self.guests.get(name)
            if guest is None:
                await self._add(domain)
                report["added"].append(name)
            elif guest.domain != domain:
                guest.domain = domain
                guest.actor.machine.set_policy(policy_of(domain))
                guest.actor.ready_regex = domain.policy.ready_console_regex
                report["changed"].append(name)
            else:
                report["unchanged"].append(name)
        for name in list(self.guests):
            if name not in domains:
                guest = self.guests[name]
                if guest.actor.state.active or guest.actor.state is lc.State.BACKOFF:
                    report["kept"].append(name)  # running: keep it until it stops
                    continue
                self._forget(guest)
                report["removed"].append(name)
        log.info("definitions_reloaded", **{k: v for k, v in report.items() if v})
        self.bus.publish("daemon.reload", **report)
        for name in report["added"]:
            if domains[name].policy.autostart:
                await self._start_quietly(self.guests[name])
        return report

    async def _start_quietly(self, guest: Guest) -> None:
        try:
            await guest.actor.request(lc.Start())
        except SupervisorError as exc:
            log.warning("autostart_failed", guest=guest.domain.name, error=str(exc))

    async def autostart(self) -> None:
        """Start the autostart guests in ``start_order``, honouring ``depends_on`` and
        ``start_delay``."""
        todo = sorted(
            (g for g in self.guests.values() if g.domain.policy.autostart),
            key=lambda g: (g.domain.policy.start_order, g.domain.name),
        )
        await self._prepare_consoles(todo)
        previous_order = None
        for guest in todo:
            order = guest.domain.policy.start_order
            if order != previous_order:
                # An idle actor takes its start without a schedule point, and the workers
                # it starts run together, in either order: one step between two start
                # orders has every launch of the first begin before any of the next.
                previous_order = order
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            for dep in guest.domain.policy.depends_on:
                dep_guest = self.guests.get(dep)
                if dep_guest is None:
                    log.warning("dependency_missing", guest=guest.domain.name, depends_on=dep)
                    continue
                if not await dep_guest.actor.wait_ready(DEPENDENCY_WAIT):
                    blocked = dep
                    break
            else:
                blocked = None
            if blocked is not None:
                # Starting it anyway would break what depends_on promises.
                guest.actor.last_error = f"not autostarted: {blocked} is not ready"
                log.error(
                    "autostart_blocked",
                    guest=guest.domain.name,
                    depends_on=blocked,
                    state=self.guests[blocked].actor.state.value,
                )
                continue
            await self._start_quietly(guest)
            if guest.domain.policy.start_delay > 0:
                await trio.sleep(guest.domain.policy.start_delay)

    async def _prepare_consoles(self, guests: list[Guest]) -> None:
        # The simulated host's console relay makes all their pairs on one request
        # instead of one each; FreeBSD has nothing to prepare (see consolepair).
        paths = [
            g.actor.console.b_path
            for g in guests
            if g.actor.console is not None and not g.actor.console.is_open
        ]
        try:
            await consolepair.ensure_pairs(self.host, paths)
        except SupervisorError as exc:
            log.warning("consoles_not_prepared", error=str(exc))

    async def adopt_all(self) -> dict[str, str]:
        """Take over the guests an earlier daemon left running, and clean the leftovers
        of those that are gone (see :meth:`GuestActor.adopt`).

        Returns:
            Each guest's outcome: ``adopted``, ``exited``, ``cleaned`` or ``none``.
        """
        outcomes: dict[str, str] = {}
        limit = trio.CapacityLimiter(16)
        present = self._runtime_names()

        async def adopt(guest: Guest) -> None:
            async with limit:
                try:
                    outcomes[guest.domain.name] = await guest.actor.adopt()
                except Exception as exc:
                    # One guest's trouble must not keep the daemon from starting.
                    outcomes[guest.domain.name] = "failed"
                    log.exception("adopt_failed", guest=guest.domain.name, error=str(exc))

        async with trio.open_nursery() as nursery:
            for guest in self.guests.values():
                if present is not None and guest.domain.name not in present:
                    # A first start after the host booted: nothing to look at.
                    outcomes[guest.domain.name] = await guest.actor.adopt(nothing_left=True)
                else:
                    nursery.start_soon(adopt, guest)
        adopted = sorted(n for n, o in outcomes.items() if o == "adopted")
        if adopted or any(o != "none" for o in outcomes.values()):
            log.info(
                "guests_adopted",
                adopted=adopted,
                exited=sorted(n for n, o in outcomes.items() if o == "exited"),
                cleaned=sorted(n for n, o in outcomes.items() if o == "cleaned"),
            )
        return outcomes

    def _runtime_names(self) -> set[str] | None:
        """The names that have a pid file or a status file in the run directory, or a
        VM in /dev/vmm: the guests whose adoption has something to look at. None when
        a directory cannot be read (then every guest is looked at)."""
        try:
            run_entries = _listdir(self.host.path(self.paths.run_dir))
            names = {n for e in run_entries if (n := self.paths.guest_of(e)) is not None}
            names.update(_listdir(self.host.path(VMM_DIR)))
        except OSError as exc:
            log.warning("runtime_dir_unreadable", error=str(exc))
            return None
        return names

    async def _autostart_then_trim(self) -> None:
        # Start-up parses every definition and launches every guest; the memory that took
        # is free again once the launches are done, but glibc keeps it unless asked.
        try:
            await self.autostart()
            await self._launches_done(AUTOSTART_STALL)
        finally:
            self.autostarted.set()
        _trim_heap()

    async def _launches_done(self, stall: float) -> None:
        """Wait until no guest is starting, or until *stall* seconds pass in which none
        stopped starting.

        It wakes when the last one stops starting and when a stall window ends, not at
        every guest's change of state: at 500 guests those wakeups (and a timeout scope
        each) were a noticeable part of the daemon's start-up CPU.
        """
        self._start_progress_at = trio.current_time()
        try:
            while self.state_counts[lc.State.STARTING]:
                self._starting_drained = drained = trio.Event()
                with trio.move_on_at(self._start_progress_at + stall):
                    await drained.wait()
                now = self.state_counts[lc.State.STARTING]
                if now and trio.current_time() >= self._start_progress_at + stall:
                    log.warning("autostart_stalled", starting=now)
                    return
        finally:
            self._starting_drained = None

    async def shutdown_all(self, budget: float) -> None:
        """Shut every running guest down within *budget* seconds, in reverse start order.

        Guests of one ``start_order`` stop together, the highest order first, so a guest
        is stopped before the ones it was started after (its dependencies). Whatever is
        still running when the budget is nearly spent is forced off.
        """
        active = [g for g in self.guests.values() if g.actor.state.active]
        if not active:
            return
        log.info("shutting_down_guests", count=len(active), budget=budget)
        deadline = trio.current_time() + budget
        # Keep a margin for the forced poweroffs that may follow.
        force_margin = min(10.0, budget / 4)

        async def stop(guest: Guest, grace: float) -> None:
            actor = guest.actor
            try:
                await actor.request(lc.Shutdown(timeout=grace))
            except SupervisorError:
                pass
            state = await actor.wait_settled(grace + 1.0)
            if state.active:
                try:
                    await actor.request(lc.Destroy())
                except SupervisorError:
                    pass
                await actor.wait_settled(5.0)

        orders = sorted({g.domain.policy.start_order for g in active}, reverse=True)
        for order in orders:
            group = [
                g for g in active if g.domain.policy.start_order == order and g.actor.state.active
            ]
            grace = max(1.0, deadline - trio.current_time() - force_margin)
            async with trio.open_nursery() as nursery:
                for guest in group:
                    nursery.start_soon(stop, guest, grace)

    def status(self) -> dict[str, Any]:
        states = {state.value: n for state, n in self.state_counts.items() if n}
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.started_at, 3),
            "host_root": self.host.root,
            "guests": len(self.guests),
            "states": states,
            "subscribers": self.bus.subscribers,
            "capabilities": self._cap_names,
        }

    # -- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :attr:`stopping` is set; then stop (and maybe shut guests down)."""
        from supervisor import api  # the method table needs a Daemon to bind to
        from supervisor.rpc.server import group_policy, serve_unix

        _make_dirs(self.host, self.config)
        async with consolepair.session(self.host), trio.open_nursery() as nursery:
            self._nursery = nursery
            # The areas register their launch hooks here: before any actor is made or
            # adopts a guest, so every guest gets all of them.
            registry = api.build_registry(self)
            domains, problems = self.store.load_all()
            for p in problems:
                log.error("definition_unreadable", path=p.path, error=p.error)
            await self.taps.sweep(lambda n: guest_alive(self.host, self.paths.pid_file(n)))
            await nursery.start(self.networks.run)
            await self._add_all(domains.values())
            await self.adopt_all()
            d = self.config.daemon
            await nursery.start(
                lambda task_status: serve_unix(
                    self.host.path(d.socket),
                    registry,
                    authorize=group_policy(
                        rw_groups=_gids(d.socket_group), ro_groups=_gids(d.readonly_group)
                    ),
                    mode=self.config.socket_mode,
                    group=group_id(d.socket_group),
                    task_status=task_status,
                )
            )
            log.info(
                "daemon_started",
                version=__version__,
                socket=self.host.path(d.socket),
                guests=len(self.guests),
                host_root=self.host.root,
            )
            nursery.start_soon(self._autostart_then_trim)
            task_status.started()
            await self.stopping.wait()
            if self.stop_guests_on_exit:
                await self.shutdown_all(self.config.daemon.shutdown_budget)
            for guest in self.guests.values():
                guest.actor.close()
            nursery.cancel_scope.cancel()
        log.info("daemon_stopped")


async def probe_caps(host: Host) -> capsmod.Capabilities:
    """libvirt's capability probe, run against this host's bhyve (and grub-bhyve)."""

    outputs: dict[str, str | None] = {}
    for arg, (argv, stream) in capsmod.PROBES.items():
        if not os.path.exists(host.path(argv[0])):
            outputs[arg] = None  # grub-bhyve is optional
            continue
        try:
            r = await run_tool(host, list(argv), timeout=10.0)
        except SupervisorError:
            outputs[arg] = ""
            continue
        outputs[arg] = r.stderr if stream == "stderr" else r.stdout
    help_text = outputs.get("help_text") or ""
    s_help = outputs.get("s_help_text") or ""
    if not help_text and not s_help:
        log.warning("bhyve_probe_failed", using="defaults")
        return capsmod.DEFAULT
    return capsmod.caps_from_probe(
        help_text,
        s_help,
        outputs.get("bootrom_text") or "",
        outputs.get("fbuf_password_text") or "",
        outputs.get("grub_help_text"),
    )


def _trim_heap() -> None:
    """Hand the allocator's free memory back to the system (glibc's malloc_trim; a
    no-op where there is none, as on FreeBSD's jemalloc, which returns it by itself)."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _gids(group: str) -> tuple[int, ...]:
    gid = group_id(group)
    return () if gid is None else (gid,)


def _make_dirs(host: Host, config: Config) -> None:
    for d in (
        config.guests.run_dir,
        config.guests.log_dir,
        config.guests.domains_dir,
        os.path.dirname(config.daemon.socket),
    ):
        os.makedirs(host.path(d), exist_ok=True)


def definition_store(host: Host, config: Config) -> DefinitionStore:
    """The guest definitions of *host*, with the cache of parsed ones."""
    return DefinitionStore(
        host,
        config.guests.domains_dir,
        _parse_definition,
        _format_definition,
        cache_path=host.path(CACHE_FILE),
        stamp=source_stamp(
            "supervisor.domain.xml",
            "supervisor.domain.model",
            "supervisor.domain.postparse",
            "supervisor.vmm.caps",
        ),
    )


# The XML layer (and lxml) is imported on first use: with every definition in the
# cache, a daemon starts without it.


def _parse_definition(data: bytes) -> Domain:
    from supervisor.domain.xml import parse_domain_xml

    return parse_domain_xml(data)


def _format_definition(domain: Domain) -> str:
    from supervisor.domain.xml import format_domain_xml

    return format_domain_xml(domain)


def provision_examples(host: Host, config: Config, examples: Iterable[Path]) -> list[str]:
    """Define the example guests on a fresh simulated host (and make their disk images).

    Returns the names defined; existing definitions are left alone.
    """
    store = definition_store(host, config)
    defined = []
    existing, _ = store.load_all()
    for path in sorted(examples):
        domain = _parse_definition(path.read_bytes())
        if domain.name in existing:
            continue
        for disk in domain.disks:
            if disk.type == "file" and disk.source and disk.device == "disk":
                local = host.path(disk.source)
                if not os.path.exists(local):
                    os.makedirs(os.path.dirname(local), exist_ok=True)
                    with open(local, "wb") as f:
                        f.truncate(64 << 20)  # sparse: costs nothing until written
        store.save(domain)
        defined.append(domain.name)
    return defined


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bhyvesupd", description="bhyve guest supervisor daemon")
    p.add_argument("--config", "-c", help="configuration file (default %(default)s)")
    p.add_argument(
        "--sim",
        metavar="DIR",
        help="run on the simulated FreeBSD host rooted at DIR (created if missing), "
        "with the example guests defined and started",
    )
    p.add_argument(
        "--no-examples",
        action="store_true",
        help="with --sim: do not define the example guests",
    )
    p.add_argument(
        "--keep-guests",
        action="store_true",
        help="with --sim: leave guests running when the daemon stops",
    )
    p.add_argument(
        "--guest-engine",
        choices=["scripted", "qemu"],
        default="scripted",
        help="with --sim: what runs inside the simulated bhyve: the scripted guest "
        "(default) or a real Linux under QEMU (its image is built or reused first)",
    )
    p.add_argument(
        "--sim-zfs",
        metavar="PROGRAM",
        help="with --sim: a real zfs program (zfs-fuse's) to be the host's zfs",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"bhyvesupd {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        return trio.run(_amain, args)
    except ConfigError as exc:
        print(f"bhyvesupd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _settle_heap(daemon: Daemon) -> None:
    """Once the guests are started, freeze what lives on and turn the collector on.

    Until then the cyclic collector is off (see :func:`_amain`): start-up builds the
    daemon's long-lived objects (modules, definitions, plans, actors), and the
    collector's passes over that growing heap were a tenth of the CPU it took to start
    500 guests. Frozen, those objects are kept out of later full passes too, which
    otherwise walk them all and showed as the slowest 1% of status calls.

    Not collected first: a full pass over the start-up heap costs as much again, to
    free the little cyclic garbage start-up leaves (about 1,300 objects of 115,000 at
    500 guests), which is kept instead, once.
    """
    await daemon.autostarted.wait()
    gc.freeze()
    gc.enable()


async def _amain(args: argparse.Namespace) -> int:
    gc.disable()  # until the guests are started: _settle_heap
    # Open the signal receiver first: a signal that arrives before it is lost.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        host = FREEBSD
        config_path = args.config
        if args.sim:
            from supervisor.vmm.sim import install

            root = os.path.abspath(args.sim)
            image = None
            if args.guest_engine == "qemu":
                from supervisor.vmm.sim import guestimage

                try:
                    image = await trio.to_thread.run_sync(guestimage.build)
                except guestimage.GuestImageError as exc:
                    print(f"bhyvesupd: guest image: {exc}", file=sys.stderr)
                    return 1
            host = install(
                root,
                guest_engine=args.guest_engine,
                guest_image=image,
                real_zfs=args.sim_zfs,
            )
            if config_path is None:
                config_path = host.path("/usr/local/etc/bhyvesupd.toml")
                if not os.path.exists(config_path):
                    config_path = None
        elif config_path is None and os.path.exists("/usr/local/etc/bhyvesupd.toml"):
            config_path = "/usr/local/etc/bhyvesupd.toml"
        config = load_config(config_path)
        if args.sim:
            outside = _outside_sim_root(host, config)
            if outside:
                print(
                    f"bhyvesupd: with --sim, {outside[0]} must be under one of the simulated "
                    f"host's trees ({', '.join(host.rooted)}), got {outside[1]}",
                    file=sys.stderr,
                )
                return 2
        level = args.log_level or config.daemon.log_level
        logsetup.configure(level=level, log_file=host.path(config.daemon.log_file))
        if args.sim and not args.no_examples:
            examples = list(EXAMPLES_DIR.glob("*.xml"))
            names = provision_examples(host, config, examples)
            if names:
                log.info("examples_defined", guests=names)
        caps = await probe_caps(host)
        daemon = Daemon(config, host, caps)
        if args.sim and not args.keep_guests:
            daemon.stop_guests_on_exit = True
        try:
            _check_socket_free(host.path(config.daemon.socket))
        except SupervisorError as exc:
            print(f"bhyvesupd: {exc}", file=sys.stderr)
            return 1
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            nursery.start_soon(_settle_heap, daemon)

            async def watch_signals() -> None:
                async for signo in signals:
                    if signo == signal.SIGHUP:
                        await daemon.reload()
                    else:
                        log.info("daemon_stopping", signal=signal.Signals(signo).name)
                        daemon.stopping.set()
                        return

            nursery.start_soon(watch_signals)
            await daemon.stopping.wait()
        return 0


def _outside_sim_root(host: Host, config: Config) -> tuple[str, str] | None:
    """The first daemon-owned path of *config* that a simulated host would leave on the
    real machine (it maps only its system trees), as (key, path)."""
    owned = {
        "daemon.socket": config.daemon.socket,
        "daemon.log_file": config.daemon.log_file,
        "guests.domains_dir": config.guests.domains_dir,
        "guests.run_dir": config.guests.run_dir,
        "guests.log_dir": config.guests.log_dir,
        "network.networks_dir": config.network.networks_dir,
    }
    for key, path in owned.items():
        if host.path(path) == path:
            return key, path
    return None


def _check_socket_free(path: str) -> None:
    """Refuse to start when another daemon answers on our socket."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return  # stale: the server removes it
    finally:
        probe.close()
    raise SupervisorError(f"another bhyvesupd is already serving {path}")


if __name__ == "__main__":
    sys.exit(main())
