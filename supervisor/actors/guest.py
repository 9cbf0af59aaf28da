"""The guest actor: one trio task per guest that owns its bhyve, its console and its fate.

Theory of operation
===================

The decisions live in the pure :class:`~supervisor.actors.lifecycle.Lifecycle`; this
module carries them out. The actor runs three kinds of work inside its private nursery:

* its **mailbox loop** takes client requests from a bounded queue, in order. A full
  mailbox makes :meth:`GuestActor.request` fail at once with
  :class:`~supervisor.errors.GuestBusyError`: an RPC caller is never left hanging. A
  request to an actor waiting on an empty mailbox is taken at once, in the caller's
  task but in the actor's context, exactly as the actor would have taken it: nothing
  can be ahead of it, and the two task switches it would cost (the actor's, and the
  caller's wait for the answer) are what starting every guest of a host at once
  spends most on after the spawns.
* a **worker** performs the actions that touch the host, one at a time and in the order
  the lifecycle asked for them (destroy a leftover VM, run the loader, spawn bhyve,
  ``bhyvectl --force-poweroff``, clean up). Sequencing matters: a clean-up racing a
  relaunch would destroy the new VM.
* small tasks that report back: the **exit watch** of the running bhyve, the
  **timers** the lifecycle arms, and the **console pump**.

Outcomes are fed back into the lifecycle synchronously (:meth:`GuestActor._apply`);
trio runs one task at a time, so the table is never entered twice at once.

bhyve is started in a session of its own with its output going to a file, never a pipe:
it must outlive the daemon (an upgrade or a ``kill -9`` of bhyvesupd leaves guests
running) and a pipe whose reader died would kill it with SIGPIPE. It is spawned and
waited for by :mod:`supervisor.vmm.platform.children`, from the event loop, and waiting
is all a cancellation stops: when the daemon goes away the actor is cancelled and bhyve
simply keeps running. (A loader is different: a cancelled launch stops it.)

A launch can fail for the guest's reasons (the loader fails, bhyve exits at once) or for
the host's (no space for the runtime files, no descriptors, no memory to fork): the
lifecycle counts only the former as crashes, and retries the latter until the host
recovers.

Nothing that goes wrong inside one actor reaches the daemon's nursery: :meth:`run`
catches and logs every exception, marks the guest, and carries on, so one guest failing
never disturbs another. A request whose handling failed that way gets
:class:`~supervisor.errors.InvalidStateError`, as does every later one: the guest's
bhyve keeps running, unsupervised, until the daemon is restarted and adopts it.
"""

from __future__ import annotations

import contextvars
import errno
import json
import os
import re
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import attrs
import structlog
import trio

from supervisor._fsutil import open_creating, write_all, write_atomic
from supervisor._record import Record
from supervisor.actors import lifecycle as lc
from supervisor.actors.console import Console, ConsoleLog
from supervisor.errors import GuestBusyError, InvalidStateError, SupervisorError
from supervisor.events import EventBus
from supervisor.host import Host
from supervisor.log import get_logger
from supervisor.vmm.hostexec import resolve_argv, run_tool, tool_env
from supervisor.vmm.platform import children, procwatch

if TYPE_CHECKING:
    from supervisor.domain.model import Domain

log = get_logger("bhyvesupd.guest")

_T = TypeVar("_T")


@attrs.frozen(repr=False)
class LaunchPlan(Record):
    """What to run to start the guest once: produced from the definition by the daemon."""

    loader: tuple[str, ...] | None
    bhyve: tuple[str, ...]
    device_map: str | None = None
    device_map_path: str | None = None
    #: Console B-side FreeBSD path (com1), if the guest has an nmdm console.
    console: str | None = None
    #: Unix socket paths bhyve creates and never removes (virtio-console ports).
    sockets: tuple[str, ...] = ()
    #: The definition the plan was made from (for launch hooks).
    domain: Domain | None = None


class LaunchHook(Protocol):
    """Host resources a guest needs while it runs (taps, passthrough devices, ...).

    ``before_launch`` runs before every launch, after a leftover VM is destroyed and
    before the loader; it must be idempotent (a reboot launches again with the resources
    still held). Raising :class:`~supervisor.errors.SupervisorError` fails the launch with
    that message. ``after_stop`` runs once the guest is finally down (shut off, crashed or
    fatal), after ``bhyvectl --destroy``, in reverse hook order; its errors are logged.
    """

    async def before_launch(self, name: str, plan: LaunchPlan) -> None: ...

    async def after_stop(self, name: str, plan: LaunchPlan) -> None: ...


@attrs.frozen(repr=False)
class GuestPaths(Record):
    """Where a guest's runtime files live (FreeBSD paths)."""

    run_dir: str
    log_dir: str

    def pid_file(self, name: str) -> str:
        return f"{self.run_dir}/{name}.pid"

    def status_file(self, name: str) -> str:
        return f"{self.run_dir}/{name}.status"

    def guest_of(self, run_entry: str) -> str | None:
        """The guest whose pid or status file is *run_entry* (a name in ``run_dir``)."""
        name, _, suffix = run_entry.rpartition(".")
        return name if suffix in ("pid", "status") and name else None

    def bhyve_log(self, name: str) -> str:
        return f"{self.log_dir}/{name}.bhyve.log"

    def console_log(self, name: str) -> str:
        return f"{self.log_dir}/{name}.console.log"


@attrs.define(eq=False, repr=False)
class _Request(Record):
    event: lc.Event
    done: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None


class _Queue(Generic[_T]):
    """A queue with one consumer task, far lighter than a trio memory channel (two per
    guest, for hundreds of guests).

    ``put`` never blocks: with a *limit*, it refuses (returns False) when that many
    items wait. ``get`` returns None once the queue is closed and empty.
    """

    __slots__ = ("_items", "_limit", "_waiter", "closed")

    def __init__(self, limit: int | None = None) -> None:
        self._items: list[_T] = []
        self._limit = limit
        self._waiter: trio.lowlevel.Task | None = None
        self.closed = False

    def put(self, item: _T) -> bool:
        if self.closed or (self._limit is not None and len(self._items) >= self._limit):
            return False
        self._items.append(item)
        self._wake()
        return True

    def close(self) -> None:
        self.closed = True
        self._wake()

    @property
    def idle(self) -> bool:
        """Whether the consumer waits in :meth:`get` with nothing queued."""
        return self._waiter is not None

    def _wake(self) -> None:
        if self._waiter is not None:
            task, self._waiter = self._waiter, None
            trio.lowlevel.reschedule(task)

    @property
    def pending(self) -> int:
        """Items waiting."""
        return len(self._items)

    def drain(self) -> list[_T]:
        """Every waiting item, which leaves the queue."""
        items, self._items = self._items, []
        return items

    def take_nowait(self) -> _T | None:
        """The first item, if one is waiting (no schedule point)."""
        return self._items.pop(0) if self._items else None

    async def get(self) -> _T | None:
        if not self._items and not self.closed:
            assert self._waiter is None, "one consumer only"
            self._waiter = trio.lowlevel.current_task()

            def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            await trio.lowlevel.checkpoint()
        if self._items:
            return self._items.pop(0)
        return None


class GuestActor:
    """One guest.

    Args:
        name: the guest's name.
        plan_factory: builds the :class:`LaunchPlan` from the current definition; called
            at every launch so a redefinition takes effect at the next boot.
        policy: the lifecycle policy.
        host: the host the guest runs on.
        paths: runtime file locations.
        bus: where state changes are published.
        console_path: the B side of com1, or None.
        mailbox_size: requests that may wait before callers get "busy".
        hooks: host resources acquired before each launch, released after the final stop.
        ready_regex: the guest is "ready" once its console prints a match after a boot
            (``policy.ready_console_regex``); without one, running means ready.
        env: the environment of the guest's programs (default: this host's tool
            environment, :func:`~supervisor.vmm.hostexec.tool_env`).
        on_state: called with the old and the new state at every change of state,
            synchronously (the daemon keeps its count of guests by state with it).
    """

    def __init__(
        self,
        name: str,
        *,
        plan_factory: Callable[[], LaunchPlan],
        policy: lc.Policy,
        host: Host,
        paths: GuestPaths,
        bus: EventBus,
        console_path: str | None,
        mailbox_size: int = 32,
        console_ring: int = 256 * 1024,
        console_log_max: int = 1 << 20,
        console_log_keep: int = 3,
        hooks: Sequence[LaunchHook] = (),
        ready_regex: str | None = None,
        env: Mapping[str, str] | None = None,
        on_state: Callable[[lc.State, lc.State], None] | None = None,
    ) -> None:
        self.name = name
        self.on_state = on_state
        self.host = host
        self.paths = paths
        self.bus = bus
        self.plan_factory = plan_factory
        # Not copied: hooks an area registers after the actor was made still apply.
        self.hooks = hooks
        self.ready_regex = ready_regex
        # Readiness of the current boot: the console offset the boot began at, how far
        # the output has been searched, and the boot found ready.
        self._boot_mark = 0
        self._ready_scanned = 0
        self._ready_boot: int | None = None
        self._cleanups_pending = 0
        self.machine = lc.Lifecycle(policy=policy)
        self.console: Console | None = None
        if console_path is not None:
            self.console = Console(
                host,
                console_path,
                ConsoleLog(host.path(paths.console_log(name)), console_log_max, console_log_keep),
                ring_size=console_ring,
            )
        self._mailbox: _Queue[_Request] = _Queue(mailbox_size)
        #: The actor task's own context while it runs: a request taken in a caller's
        #: task is applied in it (see request()).
        self._context: contextvars.Context | None = None
        #: What ended the actor, if something unexpected did (see run()).
        self._failure: Exception | None = None
        self._work: _Queue[lc.Action] = _Queue()
        self._worker_started = False
        self._nursery: trio.Nursery | None = None
        self._timers: dict[lc.Timer, trio.CancelScope] = {}
        self._launch_scope: trio.CancelScope | None = None
        self._launch_cancelled = False
        #: The environment bhyve and the loader run with. The daemon passes one for all
        #: its guests: a copy of os.environ per launch, or per guest, was a measurable
        #: part of starting (and then keeping) 500 guests.
        self._env = env if env is not None else tool_env(host)
        self._console_running = False
        self._changed = trio.Event()
        self.last_error: str | None = None
        self.last_plan: LaunchPlan | None = None
        #: adopt() found no status file and none has been written since. A first
        #: launch then has nothing to record beyond the pid file (see _launch).
        self._status_absent = False
        self._log = log.bind(guest=name)

    # -- client side ---------------------------------------------------------------------

    @property
    def state(self) -> lc.State:
        return self.machine.state

    async def request(self, event: lc.Event) -> None:
        """Have the actor take a client request: at once if it waits for one (no
        schedule point then), else queued behind the others, waited for until taken.

        Raises:
            GuestBusyError: the mailbox is full.
            InvalidStateError: the request makes no sense in the guest's state, or the
                guest is being removed, or its actor failed.
        """
        if self._failure is not None:
            raise self._failed()
        if self._mailbox.closed:
            raise InvalidStateError(f"guest {self.name} is being removed")
        if self._mailbox.idle:
            # Taken now, in the actor's context (its log bindings; the tasks it starts
            # copy that context, not the caller's), with no schedule point: callers
            # starting many guests at once go through all of them in one step. Only
            # run() waits on the mailbox, and it set the context before it did.
            assert self._context is not None
            error = self._context.run(self._take, event)
            if error is not None:
                raise error
            return
        req = _Request(event)
        if not self._mailbox.put(req):
            raise GuestBusyError(f"guest {self.name} is busy ({self.state.value}); try again")
        await req.done.wait()
        if req.error is not None:
            raise req.error

    def _take(self, event: lc.Event) -> SupervisorError | None:
        """Apply a client's request; the error the client gets, or None.

        An unexpected exception ends the actor (see :meth:`run`): it is kept in
        ``_failure`` and the mailbox closed, and the client is told the actor failed.
        """
        try:
            self._apply(event)
        except lc.InvalidTransition as exc:
            return InvalidStateError(f"{self.name}: {exc}")
        except SupervisorError as exc:
            return exc
        except Exception as exc:
            self._failure = exc
            self._mailbox.close()
            return self._failed()
        return None

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _failed(self) -> InvalidStateError:
        return InvalidStateError(
            f"guest {self.name}: its actor failed ({self._failure!r}) and takes no more "
            "requests; bhyve, if running, runs on until the daemon is restarted"
        )

    async def wait_until(self, predicate: Callable[[lc.State], bool], timeout: float) -> lc.State:
        """Wait (at most *timeout* s) for the state to satisfy *predicate*."""
        with trio.move_on_after(timeout):
            while not predicate(self.state):
                await self._changed.wait()
        return self.state

    @property
    def settled(self) -> bool:
        """Whether the guest is down and everything its stop releases has been released
        (VM destroyed, pid file, sockets and hook resources gone)."""
        return not self.state.active and self._cleanups_pending == 0

    async def wait_settled(self, timeout: float) -> lc.State:
        """Wait (at most *timeout* s) until :attr:`settled`; returns the state then."""
        with trio.move_on_after(timeout):
            while not self.settled:
                await self._changed.wait()
        return self.state

    def info(self) -> dict[str, Any]:
        """The guest's runtime facts, JSON-ready."""
        m = self.machine
        now = time.monotonic()
        last_exit = None
        if m.last_exit is not None:
            last_exit = {
                "code": m.last_exit.code,
                "signal": m.last_exit.signal,
                "description": m.last_exit.describe(),
                "runtime": m.last_runtime,
                "ago": None if m.last_exit_at is None else round(now - m.last_exit_at, 3),
            }
        return {
            "name": self.name,
            "state": m.state.value,
            "reason": m.reason,
            "pid": m.pid,
            "boot_count": m.boot_count,
            "uptime": None if m.started_at is None else round(now - m.started_at, 3),
            "last_exit": last_exit,
            "recent_crashes": m.recent_crashes(now),
            "restart_in": None
            if m.backoff_until is None
            else round(max(0.0, m.backoff_until - now), 3),
            "last_error": self.last_error,
            "console_attached": self.console.attachments if self.console else 0,
            "ready": self.is_ready(),
        }

    def is_ready(self) -> bool:
        """Whether the guest is running and, with a readiness pattern, has printed it on
        its console since it last booted."""
        m = self.machine
        if m.state is not lc.State.RUNNING:
            return False
        if self.ready_regex is None or self.console is None:
            return True
        if self._ready_boot == m.boot_count:
            return True
        console = self.console
        # Search only what is new (plus an overlap for a match across two reads) and
        # only what this boot printed; the ring keeps the last part of it.
        start = max(self._boot_mark, self._ready_scanned - 4096)
        text = console.tail(max(0, console.total - start))
        self._ready_scanned = console.total
        if re.search(self.ready_regex, text.decode("utf-8", "replace"), re.MULTILINE):
            self._ready_boot = m.boot_count
            return True
        return False

    async def wait_ready(self, timeout: float) -> bool:
        """Wait (at most *timeout* s) until :meth:`is_ready`; False if the guest stopped
        or the time ran out."""
        with trio.move_on_after(timeout):
            while not self.is_ready():
                if not self.state.active:
                    return False
                await trio.sleep(0.1)
            return True
        return False

    # -- the actor -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The actor's task. Returns when its mailbox is closed; never raises."""
        with structlog.contextvars.bound_contextvars(guest=self.name):
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._context = trio.lowlevel.current_task().context
                    self._start_worker()  # for actions applied before the actor ran
                    task_status.started()
                    while self._failure is None and (req := await self._mailbox.get()) is not None:
                        req.error = self._take(req.event)
                        req.done.set()
                    self._raise_failure()  # from here, or from a caller's task
                    nursery.cancel_scope.cancel()
            except Exception as exc:
                # One guest's failure must never reach the daemon's nursery. Nor may its
                # callers wait for an actor that is gone: whatever is queued, and every
                # later request, gets an error.
                if self._failure is None:
                    self._failure = exc
                self._mailbox.close()
                for req in self._mailbox.drain():
                    req.error = self._failed()
                    req.done.set()
                self.last_error = f"actor failed: {exc!r}"
                self._log.exception("guest_actor_failed")
                self._publish()
            finally:
                self._context = None

    def close(self) -> None:
        """Stop taking requests; :meth:`run` returns (bhyve, if running, keeps running)."""
        self._mailbox.close()

    # -- adoption ----------------------------------------------------------------------------

    async def adopt(self, *, nothing_left: bool = False) -> str:
        """Take over the guest's bhyve if an earlier daemon left it running.

        Called once, after :meth:`run` has started and before any request. The pid file
        names the bhyve; it is taken over only when that process is alive, carries the
        title ``bhyve: NAME`` (a recycled pid belongs to someone else) and
        ``/dev/vmm/NAME`` exists. A bhyve that ended while no daemon watched is handled
        by the guest's policy when its exit status is known (as if it had just
        exited), and otherwise left off. Leftovers of a guest with no living bhyve (the
        VM, the pid file, sockets, the resources of the launch hooks) are removed.

        Args:
            nothing_left: the caller has seen that the guest has no pid file, no status
                file and no VM (one directory listing for all guests, instead of three
                lookups for each): there is nothing to take over or clean.

        Returns:
            What was found: ``adopted``, ``exited``, ``cleaned`` or ``none``.
        """
        assert self._nursery is not None, "adopt() needs the actor running"
        if nothing_left:
            self._status_absent = True
            return "none"
        pid = self._read_pid()
        saved = self._read_status()
        if pid is not None and not saved:
            saved = self._first_boot_record()
        alive = pid is not None and procwatch.pid_alive(pid)
        ours = pid is not None and alive and await procwatch.is_bhyve(self.host, pid, self.name)
        if self._vm_exists():
            running = pid if ours else None
            if running is None:
                # A VM whose bhyve the pid file does not name (the file was removed by
                # hand or lost, or the daemon died between a relaunch's spawn and its
                # pid file): that bhyve may still be running. Destroying the VM would
                # kill it.
                running = await procwatch.find_bhyve(self.host, self.name)
            if running is not None:
                await self._take_over(running, saved)
                if running != pid:
                    self._log.warning(
                        "pid_file_missing" if pid is None else "pid_file_stale",
                        pid=running,
                        recorded=pid,
                    )
                    try:
                        self._write_pid(running)  # for the daemon after us
                    except OSError as exc:
                        self._log.warning("pid_write_failed", error=exc.strerror)
                return "adopted"
        if alive:
            assert pid is not None
            title = await procwatch.process_title(self.host, pid)
            self._log.warning("pid_file_stale", pid=pid, title=title)
            pid = None
        if pid is not None:
            # It ended while nobody watched; the OS may still say how.
            info = await procwatch.wait_for_exit(self.host, pid)
            if info.known:
                self._log.info(
                    "bhyve_exited_while_away",
                    pid=pid,
                    status=lc.ExitStatus(info.code, info.signal).describe(),
                )
                self._apply(lc.Adopted(pid=pid, **_history(saved)))
                self._apply(lc.Exited(lc.ExitStatus(info.code, info.signal), _runtime(saved)))
                return "exited"
            self._log.warning("bhyve_gone_without_status", pid=pid)
        if pid is None and not saved and not self._vm_exists():
            # No pid file, no status file, no VM: the guest has not run on this host
            # since /var/run was emptied, so nothing of it is left to clean (taps of a
            # launch that died half-way are swept when the daemon starts). Building its
            # plan and asking every hook just in case was a measurable part of starting
            # 500 guests.
            return "none"
        return "cleaned" if await self._clean_leftovers(saved) else "none"

    async def _take_over(self, pid: int, saved: dict[str, Any]) -> None:
        plan = self._safe_plan()
        self.last_plan = plan
        await self._hold_console()
        self._apply(lc.Adopted(pid=pid, **_history(saved)))
        assert self._nursery is not None
        self._nursery.start_soon(self._watch_adopted, pid, time.monotonic() - _runtime(saved))
        self._write_status()
        self._log.info("guest_adopted", pid=pid, boot=self.machine.boot_count)

    async def _clean_leftovers(self, saved: dict[str, Any]) -> bool:
        found: list[str] = []
        if self._vm_exists():
            found.append(f"/dev/vmm/{self.name}")
            await self._bhyvectl("--destroy")
        pid_file = self.host.path(self.paths.pid_file(self.name))
        if os.path.exists(pid_file):
            found.append(self.paths.pid_file(self.name))
            _unlink(pid_file)
        plan = self._safe_plan()
        if plan is not None:
            for sock in plan.sockets:
                if os.path.lexists(self.host.path(sock)):
                    found.append(sock)
                    _unlink(self.host.path(sock))
            # Hooks release what a crashed daemon may have left (taps...); they must
            # be harmless when there is nothing to release.
            for hook in reversed(self.hooks):
                try:
                    await hook.after_stop(self.name, plan)
                except Exception as exc:
                    self._log.warning("release_failed", hook=type(hook).__name__, error=str(exc))
        if found:
            self._log.info("leftovers_removed", what=found)
        if saved.get("state") in {s.value for s in lc.State if s.active}:
            self.machine.reason = "bhyve ended while the daemon was not running (status unknown)"
            self._publish()
        return bool(found)

    def _safe_plan(self) -> LaunchPlan | None:
        try:
            return self.plan_factory()
        except SupervisorError as exc:
            self._log.warning("plan_failed", error=str(exc))
            return None

    def _read_pid(self) -> int | None:
        try:
            with open(self.host.path(self.paths.pid_file(self.name))) as f:
                text = f.read().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and int(text) > 0 else None

    def _first_boot_record(self) -> dict[str, Any]:
        """What a first launch, which writes no status file, leaves on record: boot 1,
        running since its pid file was written."""
        try:
            written = os.stat(self.host.path(self.paths.pid_file(self.name))).st_mtime
        except OSError:
            return {}
        return {"state": "running", "boot_count": 1, "uptime": 0.0, "written_at": written}

    def _read_status(self) -> dict[str, Any]:
        try:
            with open(self.host.path(self.paths.status_file(self.name))) as f:
                data = json.load(f)
        except FileNotFoundError:
            self._status_absent = True
            return {}
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    async def _watch_adopted(self, pid: int, started: float) -> None:
        # Not our child: procwatch learns the end (and, where the OS keeps it, the status).
        info = await procwatch.wait_for_exit(self.host, pid)
        status = lc.ExitStatus(info.code, info.signal)
        runtime = time.monotonic() - started
        self._log.info("bhyve_exited", pid=pid, status=status.describe(), runtime=round(runtime, 3))
        self._apply(lc.Exited(status, runtime))

    # -- applying events ---------------------------------------------------------------------

    def _apply(self, event: lc.Event) -> None:
        before = self.machine.state
        actions = self.machine.handle(event, time.monotonic())
        after = self.machine.state
        if after is not before:
            if self.on_state is not None:
                self.on_state(before, after)
            if after in _RESUMABLE:
                # A daemon adopting this bhyve after us must know a stop or reboot is
                # under way (see adopt()).
                self._write_status()
        for action in actions:
            self._act(action)
        if self.machine.state is not before or not isinstance(event, lc.TimerFired):
            self._publish()
        self._log.debug("guest_event", trigger=type(event).__name__, state=self.state.value)

    def _publish(self) -> None:
        m = self.machine
        self.bus.publish(
            "guest.state",
            name=self.name,
            state=m.state.value,
            reason=m.reason,
            pid=m.pid,
            boot_count=m.boot_count,
        )
        self._changed.set()
        self._changed = trio.Event()

    def _act(self, action: lc.Action) -> None:
        match action:
            case lc.PressPowerButton():
                self._signal(signal.SIGTERM)
            case lc.Kill():
                self._signal(signal.SIGKILL)
            case lc.ArmTimer(timer=timer, delay=delay):
                self._arm(timer, delay)
            case lc.CancelTimer(timer=timer):
                scope = self._timers.pop(timer, None)
                if scope is not None:
                    scope.cancel()
            case lc.CancelLaunch():
                self._launch_cancelled = True
                if self._launch_scope is not None:
                    self._launch_scope.cancel()
            case lc.Launch():
                self._launch_cancelled = False
                self._queue_work(action)
            case lc.Cleanup():
                # Counted from now: a client told "shutoff" must not find the VM, the
                # pid file or the taps still there (see wait_settled).
                self._cleanups_pending += 1
                self._queue_work(action)
            case _:
                self._queue_work(action)

    def _signal(self, signo: int) -> None:
        pid = self.machine.pid
        if pid is None:
            return
        try:
            os.kill(pid, signo)
            self._log.info("bhyve_signalled", pid=pid, signal=signal.Signals(signo).name)
        except ProcessLookupError:
            pass

    def _arm(self, timer: lc.Timer, delay: float) -> None:
        old = self._timers.pop(timer, None)
        if old is not None:
            old.cancel()
        scope = trio.CancelScope()
        self._timers[timer] = scope
        assert self._nursery is not None

        async def fire() -> None:
            with scope, structlog.contextvars.bound_contextvars(guest=self.name):
                await trio.sleep(delay)
                if self._timers.get(timer) is scope:
                    del self._timers[timer]
                    self._apply(lc.TimerFired(timer))

        self._nursery.start_soon(fire)

    # -- the worker: host actions, in order --------------------------------------------------

    def _queue_work(self, action: lc.Action) -> None:
        self._work.put(action)
        self._start_worker()

    def _start_worker(self) -> None:
        # Started by the first action, which it takes at once: a worker started with the
        # actor would take a step of its own just to start waiting, for every guest of
        # the host, most of which then start.
        if not self._worker_started and self._nursery is not None and self._work.pending:
            self._worker_started = True
            self._nursery.start_soon(self._worker)

    async def _worker(self) -> None:
        # Bound here, not inherited: the first action may come from a task other than
        # the actor's (adoption, a timer), and the worker's tasks (the exit watch, the
        # console pump) inherit what it has.
        with structlog.contextvars.bound_contextvars(guest=self.name):
            try:
                await self._work_loop()
            finally:
                self._worker_started = False  # cancelled with the actor: a next run starts one

    async def _work_loop(self) -> None:
        action = self._work.take_nowait()
        while action is not None:
            try:
                await self._perform(action)
            except Exception as exc:
                self.last_error = f"{type(action).__name__}: {exc}"
                self._log.warning(
                    "guest_action_failed", action=type(action).__name__, error=str(exc)
                )
                if isinstance(action, lc.Launch):
                    self._apply(lc.LaunchFailed(reason=str(exc), host_fault=_is_host_fault(exc)))
            action = await self._work.get()

    async def _perform(self, action: lc.Action) -> None:
        match action:
            case lc.Launch(destroy_first=destroy_first):
                if self._launch_cancelled:
                    self._apply(lc.LaunchFailed(reason="cancelled"))
                    return
                await self._launch(destroy_first)
            case lc.ForcePoweroff():
                await self._bhyvectl("--force-poweroff")
            case lc.ForceReset():
                await self._bhyvectl("--force-reset")
            case lc.Cleanup(keep_vm=keep_vm):
                try:
                    await self._cleanup(keep_vm)
                finally:
                    self._cleanups_pending -= 1
                    self._changed.set()
                    self._changed = trio.Event()

    async def _bhyvectl(self, *args: str) -> None:
        result = await run_tool(self.host, ["bhyvectl", f"--vm={self.name}", *args])
        if not result.ok:
            self._log.warning(
                "bhyvectl_failed",
                args=args,
                status=result.status,
                output=(result.stdout + result.stderr).strip(),
            )

    def _vm_exists(self) -> bool:
        return os.path.exists(self.host.vmm_device(self.name))

    async def _destroy_vm(self) -> None:
        if self._vm_exists():
            await self._bhyvectl("--destroy")

    async def _launch(self, destroy_first: bool) -> None:
        plan = self.plan_factory()
        self.last_plan = plan
        self.last_error = None
        pid: int | None = None
        with trio.CancelScope() as scope:
            self._launch_scope = scope
            pid = await self._launch_steps(plan, destroy_first)
        self._launch_scope = None
        if scope.cancelled_caught or pid is None:
            if pid is None and not scope.cancelled_caught:
                return  # the loader failed; already reported
            self._apply(lc.LaunchFailed(reason="cancelled"))
            return
        started = time.monotonic()
        assert self._nursery is not None
        try:
            self._write_pid(pid)
        except OSError:
            # A bhyve whose pid file could not be written is not left running half set
            # up: the next daemon could not adopt it, and would take its VM for a
            # leftover. It goes before it has done anything; the launch is retried.
            children.signal_quietly(pid, signal.SIGKILL)
            self._nursery.start_soon(children.wait_child, pid)
            raise
        self._nursery.start_soon(self._watch, pid, started)
        if self.console is not None:
            self._boot_mark = self._ready_scanned = self.console.total
        self._apply(lc.Launched(pid=pid))
        if not self._nothing_to_record():
            # Again with the new boot count: a later daemon adopting this bhyve reads it.
            self._write_status()
        self._log.info("guest_started", pid=pid, boot=self.machine.boot_count)

    def _nothing_to_record(self) -> bool:
        """Whether this launch's status would say no more than its pid file does.

        A first boot with no status file on disk: a daemon adopting the bhyve reads boot
        1, no exit history, and the uptime from the pid file's age. Not writing it
        spares a guest's first start one of its four file creations, which is what
        starting every guest of a host at boot costs the most. A file left by an
        earlier run is always replaced: its boot count would be read as this one's.
        """
        m = self.machine
        return self._status_absent and m.boot_count == 1 and m.last_exit is None

    async def _launch_steps(self, plan: LaunchPlan, destroy_first: bool) -> int | None:
        try:
            if destroy_first:
                await self._destroy_vm()
            for hook in self.hooks:
                try:
                    await hook.before_launch(self.name, plan)
                except SupervisorError as exc:
                    self._launch_scope = None
                    self.last_error = str(exc)
                    self._apply(lc.LaunchFailed(reason=str(exc)))
                    return None
            await self._hold_console()
            if plan.device_map is not None and plan.device_map_path is not None:
                write_atomic(
                    self.host.path(plan.device_map_path), plan.device_map.encode(), durable=False
                )
            if plan.loader is not None:
                status = await self._run_loader(plan.loader)
                if status.code != 0:
                    self._launch_scope = None
                    self._apply(
                        lc.LaunchFailed(
                            reason=f"{os.path.basename(plan.loader[0])} failed "
                            f"({_loader_status(status)}); see {self.paths.bhyve_log(self.name)}",
                            status=status,
                        )
                    )
                    return None
            return self._spawn(plan.bhyve)
        except BaseException:
            self._launch_scope = None
            raise

    def _output_file(self) -> int:
        path = self.host.path(self.paths.bhyve_log(self.name))
        return open_creating(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    async def _run_loader(self, argv: tuple[str, ...]) -> lc.ExitStatus:
        out = self._output_file()
        try:
            _log_header(out, argv)
            self._log.info("loader_started", argv=list(argv))
            returncode = await children.run_to_end(
                resolve_argv(self.host, argv), env=self._env, output_fd=out
            )
        finally:
            os.close(out)
        return lc.ExitStatus.from_returncode(returncode)

    def _spawn(self, argv: tuple[str, ...]) -> int:
        out = self._output_file()
        try:
            _log_header(out, argv)
            # Its own session (see children): a signal to the daemon's process group
            # (a terminal's ^C) must not reach the guests.
            return children.spawn_detached(
                resolve_argv(self.host, argv), env=self._env, output_fd=out
            )
        finally:
            os.close(out)

    async def _watch(self, pid: int, started: float) -> None:
        # Cancelled when the daemon goes away: bhyve keeps running, unwatched.
        returncode = await children.wait_child(pid)
        runtime = time.monotonic() - started
        status = lc.ExitStatus.from_returncode(returncode)
        self._log.info("bhyve_exited", pid=pid, status=status.describe(), runtime=round(runtime, 3))
        self._apply(lc.Exited(status, runtime))

    async def _hold_console(self) -> None:
        # The B side is held, and drained, from before bhyve starts until the guest is
        # gone: nothing the guest prints is lost, even with no client attached.
        if self.console is None:
            return
        if not self.console.is_open:
            await self.console.open()
        if not self._console_running:
            self._console_running = True
            assert self._nursery is not None
            self._nursery.start_soon(self._pump_console)

    async def _pump_console(self) -> None:
        assert self.console is not None
        try:
            await self.console.run()
        finally:
            self._console_running = False

    async def _cleanup(self, keep_vm: bool) -> None:
        # libvirt's order: destroy the VM, then the guest's host resources.
        if not keep_vm:
            await self._destroy_vm()
        plan = self.last_plan
        if plan is not None:
            for sock in plan.sockets:
                _unlink(self.host.path(sock))
            if plan.device_map_path is not None:
                _unlink(self.host.path(plan.device_map_path))
        _unlink(self.host.path(self.paths.pid_file(self.name)))
        final = self.machine.state in (lc.State.SHUTOFF, lc.State.CRASHED, lc.State.FATAL)
        if final and plan is not None:
            for hook in reversed(self.hooks):
                try:
                    await hook.after_stop(self.name, plan)
                except Exception as exc:
                    self._log.warning("release_failed", hook=type(hook).__name__, error=str(exc))
        if final and self.console is not None and self.console.is_open:
            await self.console.aclose()
        self._write_status()

    # -- runtime files --------------------------------------------------------------------------

    def _write_pid(self, pid: int) -> None:
        # Written in place, as pidfile(3) does, not renamed into place: only a later
        # daemon reads it, and a daemon that died half-way through leaves an empty file,
        # which reads as no pid file (the bhyve is then searched for; see adopt()). The
        # status file follows once the launch is applied (same step, no await between).
        path = self.host.path(self.paths.pid_file(self.name))
        fd = open_creating(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, f"{pid}\n".encode())
        finally:
            os.close(fd)

    def _write_status(self) -> None:
        info = self.info()
        info["written_at"] = time.time()
        try:
            write_atomic(
                self.host.path(self.paths.status_file(self.name)),
                json.dumps(info, sort_keys=True).encode() + b"\n",
                durable=False,
            )
            self._status_absent = False
        except OSError as exc:
            self._log.warning("status_write_failed", error=exc.strerror)


_RESUMABLE = frozenset({lc.State.STOPPING, lc.State.REBOOTING})

#: OS errors that say the host cannot launch anything just now, whatever the guest.
_HOST_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
    | {errno.EAGAIN}  # fork: the process table or the user's process limit is full
)


def _is_host_fault(exc: BaseException) -> bool:
    """Whether a launch failed because of the host's condition (see
    :attr:`~supervisor.actors.lifecycle.LaunchFailed.host_fault`)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _HOST_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _history(saved: dict[str, Any]) -> dict[str, Any]:
    boots = saved.get("boot_count")
    state = saved.get("state")
    return {
        "boot_count": boots if isinstance(boots, int) else 1,
        "uptime": _runtime(saved),
        "resume": state if state in ("stopping", "rebooting") else "running",
    }


def _runtime(saved: dict[str, Any]) -> float:
    # The status file is written at launch with the wall-clock time: how long ago the
    # guest started, as far as the earlier daemon knew.
    written = saved.get("written_at")
    uptime = saved.get("uptime") or 0.0
    if not isinstance(written, (int, float)) or not isinstance(uptime, (int, float)):
        return 0.0
    return max(0.0, time.time() - written + uptime)


def _log_header(fd: int, argv: tuple[str, ...]) -> None:
    # One line per program run, so NAME.bhyve.log tells which run printed what. A full
    # log filesystem costs the line, never the guest's start.
    try:
        os.write(fd, f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
    except OSError as exc:
        log.warning("bhyve_log_write_failed", error=exc.strerror)


def _loader_status(status: lc.ExitStatus) -> str:
    # bhyve's exit table means nothing for a loader: just say how it ended.
    if status.code is not None:
        return f"exit status {status.code}"
    return status.describe()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
