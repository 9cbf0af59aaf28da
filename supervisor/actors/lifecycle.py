"""The guest lifecycle: a pure, table-driven state machine.

Theory of operation
===================

A guest actor owns one bhyve process at a time. Everything that can happen to it is an
*event*: a request from a client (start, shutdown, destroy, reboot, reset, clear), an
outcome of the actor's own work (the launch succeeded or failed, bhyve exited), or a timer
firing. :meth:`Lifecycle.handle` takes one event and returns the new state plus a list of
*actions* for the actor to carry out (launch, send the ACPI power button, force a poweroff,
kill, destroy the VM, arm or cancel a timer). This module does no I/O and imports no trio,
so every state x event pair is tested synchronously.

bhyve reports what happened to the guest through its exit status (bhyve(8)):

====  ==========================  ===============================================
exit  meaning                     what we do
====  ==========================  ===============================================
0     reset / reboot              ``on_reboot`` (default restart)
1     powered off                 ``on_poweroff`` (default destroy = stay off)
2     halted                      ``on_poweroff``
3     triple fault                ``on_crash``
4+    error                       ``on_crash``
sig   killed by a signal          ``on_crash``
====  ==========================  ===============================================

Two things override that table. When a client asked for a stop (shutdown or destroy),
whatever bhyve's exit is counts as a stop: a guest that has not enabled ACPI yet dies of
the SIGTERM that was meant as a power-button press, and that is the stop the user asked
for, not a crash. When a client asked for a reboot or a reset, any exit restarts the
guest (libvirt's "reboot flag"): a guest that powers off in answer to the ACPI button is
still brought back. And an exit with status 1 very early (before ``start_grace``) is a
failed start, not a poweroff, because bhyve also exits 1 on usage errors.

Crashes restart with capped exponential backoff when ``on_crash`` is ``restart``; more
than ``crash_limit`` crashes within ``crash_window`` seconds make the guest FATAL, which
only a client's start or clear leaves. With ``on_crash`` ``destroy`` (libvirt's default)
or ``preserve`` the guest stays CRASHED; ``preserve`` keeps ``/dev/vmm/NAME`` for a
post-mortem instead of destroying it.

Stopping escalates: one ACPI press, then after ``stop_timeout`` ``bhyvectl
--force-poweroff``, then after ``kill_timeout`` SIGKILL. bhyve is never killed first.
After every final exit the VM is destroyed and the guest's resources released
(:class:`Cleanup`), in libvirt's order (the actor knows the order).
"""

from __future__ import annotations

import enum
import signal as _signal
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from supervisor._record import Record

# --------------------------------------------------------------------------------------
# States


class State(enum.Enum):
    """Where a guest is in its life. Values are the strings clients see."""

    SHUTOFF = "shutoff"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    REBOOTING = "rebooting"
    BACKOFF = "backoff"
    CRASHED = "crashed"
    FATAL = "fatal"

    # Members are singletons compared by identity, so identity hashing agrees with
    # equality; Enum's own __hash__ is Python code, and every table lookup, state set
    # test and count of a state hashes one.
    __hash__ = object.__hash__

    @property
    def active(self) -> bool:
        """Whether a loader or bhyve process may exist in this state."""
        return self in _ACTIVE


_ACTIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING, State.REBOOTING})

# --------------------------------------------------------------------------------------
# Exit status

#: The first wait before a launch the host failed is tried again (seconds); it doubles
#: up to the policy's ``restart_backoff_max``.
HOST_FAULT_RETRY = 1.0

EXIT_MEANINGS = {
    0: "reboot",
    1: "poweroff",
    2: "halt",
    3: "triple fault",
    4: "error",
    64: "usage error",
    71: "OS error",
    100: "unknown suspend reason",
}


@attrs.frozen(repr=False)
class ExitStatus(Record):
    """How a bhyve (or loader) process ended.

    Exactly one of *code* and *signal* is set when the status is known; an adopted
    process whose status the OS did not keep has neither.
    """

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        """From :mod:`subprocess`'s convention: negative means killed by that signal."""
        if returncode < 0:
            return cls(signal=-returncode)
        return cls(code=returncode)

    @property
    def known(self) -> bool:
        return self.code is not None or self.signal is not None

    def describe(self) -> str:
        """A short text for status displays: ``exit 3 (triple fault)``, ``signal 9 (SIGKILL)``."""
        if self.code is not None:
            meaning = EXIT_MEANINGS.get(self.code)
            return f"exit {self.code}" + (f" ({meaning})" if meaning else "")
        if self.signal is not None:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = "?"
            return f"signal {self.signal} ({name})"
        return "unknown exit"


class Outcome(enum.Enum):
    """What an exit means to the policy."""

    REBOOT = "reboot"
    POWEROFF = "poweroff"
    CRASH = "crash"


def classify(status: ExitStatus, runtime: float, start_grace: float) -> Outcome:
    """Map bhyve's exit status to what it means for the guest (see the module table)."""
    if status.code == 0:
        return Outcome.REBOOT
    if status.code in (1, 2):
        # bhyve's usage errors exit 1 too; a "poweroff" within the grace period is a
        # start that failed.
        if status.code == 1 and runtime < start_grace:
            return Outcome.CRASH
        return Outcome.POWEROFF
    return Outcome.CRASH


# --------------------------------------------------------------------------------------
# Policy


class OnReboot(enum.Enum):
    RESTART = "restart"
    DESTROY = "destroy"


class OnPoweroff(enum.Enum):
    DESTROY = "destroy"
    RESTART = "restart"


class OnCrash(enum.Enum):
    DESTROY = "destroy"
    RESTART = "restart"
    PRESERVE = "preserve"


@attrs.frozen(repr=False)
class Policy(Record):
    """The knobs of one guest's lifecycle (from its definition)."""

    on_reboot: OnReboot = OnReboot.RESTART
    on_poweroff: OnPoweroff = OnPoweroff.DESTROY
    on_crash: OnCrash = OnCrash.DESTROY
    restart_backoff: float = 1.0
    restart_backoff_max: float = 60.0
    crash_limit: int = 5
    crash_window: float = 300.0
    stop_timeout: float = 120.0
    kill_timeout: float = 10.0
    start_grace: float = 0.1


# --------------------------------------------------------------------------------------
# Events


@attrs.frozen(repr=False)
class Start(Record):
    """A client asks for the guest to run."""


@attrs.frozen(repr=False)
class Shutdown(Record):
    """A client asks for a graceful stop (ACPI power button, then escalation)."""

    timeout: float | None = None


@attrs.frozen(repr=False)
class Destroy(Record):
    """A client asks for an immediate hard stop."""


@attrs.frozen(repr=False)
class Reboot(Record):
    """A client asks for a graceful reboot: ACPI button, and restart whatever the exit."""


@attrs.frozen(repr=False)
class Reset(Record):
    """A client asks for a hard reset (``bhyvectl --force-reset``)."""


@attrs.frozen(repr=False)
class Clear(Record):
    """A client clears a CRASHED or FATAL guest (and its crash history)."""


@attrs.frozen(repr=False)
class Launched(Record):
    """The actor has started bhyve (after the loader, if any)."""

    pid: int


@attrs.frozen(repr=False)
class LaunchFailed(Record):
    """The loader failed or bhyve could not be spawned.

    Args:
        reason: what went wrong, for the status display.
        status: how the loader ended, when it ran and failed.
        host_fault: the host could not launch anything just now (no space for the
            guest's runtime files or logs, no descriptors, no memory to fork): no fault
            of the guest's, so it is not counted as a crash.
    """

    reason: str
    status: ExitStatus | None = None
    host_fault: bool = False


@attrs.frozen(repr=False)
class Exited(Record):
    """bhyve ended."""

    status: ExitStatus
    runtime: float


@attrs.frozen(repr=False)
class Adopted(Record):
    """A bhyve left running by an earlier daemon was found and taken over.

    Args:
        pid: the running bhyve.
        boot_count: the boots the earlier daemon had counted.
        uptime: how long it has been running, as far as its records tell.
    """

    pid: int
    boot_count: int
    uptime: float
    #: What the earlier daemon was doing with it: ``running``, or a ``stopping`` or
    #: ``rebooting`` it had asked for (the power button was pressed already).
    resume: str = "running"


@attrs.frozen(repr=False)
class TimerFired(Record):
    """A timer armed by :class:`ArmTimer` went off."""

    timer: Timer


Event = (
    Start
    | Shutdown
    | Destroy
    | Reboot
    | Reset
    | Clear
    | Launched
    | LaunchFailed
    | Exited
    | Adopted
    | TimerFired
)


class Timer(enum.Enum):
    STOP = "stop"  # ACPI pressed; escalate to force-poweroff when it fires
    KILL = "kill"  # force-poweroff sent; SIGKILL when it fires
    BACKOFF = "backoff"  # waiting before a restart


# --------------------------------------------------------------------------------------
# Actions


@attrs.frozen(repr=False)
class Launch(Record):
    """Start the guest: destroy a leftover VM first if asked, run the loader, spawn bhyve.

    The actor answers with :class:`Launched` or :class:`LaunchFailed`.
    """

    destroy_first: bool
    reason: str


@attrs.frozen(repr=False)
class CancelLaunch(Record):
    """Abandon a launch in progress (kill the loader or the just-spawned bhyve)."""


@attrs.frozen(repr=False)
class PressPowerButton(Record):
    """Send SIGTERM to bhyve (the ACPI power button once the guest enabled ACPI)."""


@attrs.frozen(repr=False)
class ForcePoweroff(Record):
    """``bhyvectl --vm=NAME --force-poweroff``."""


@attrs.frozen(repr=False)
class ForceReset(Record):
    """``bhyvectl --vm=NAME --force-reset``."""


@attrs.frozen(repr=False)
class Kill(Record):
    """SIGKILL bhyve."""


@attrs.frozen(repr=False)
class Cleanup(Record):
    """Release everything after a final exit: ``bhyvectl --destroy`` (unless *keep_vm*),
    taps, sockets, in libvirt's order."""

    keep_vm: bool = False


@attrs.frozen(repr=False)
class ArmTimer(Record):
    timer: Timer
    delay: float


@attrs.frozen(repr=False)
class CancelTimer(Record):
    timer: Timer


Action = (
    Launch
    | CancelLaunch
    | PressPowerButton
    | ForcePoweroff
    | ForceReset
    | Kill
    | Cleanup
    | ArmTimer
    | CancelTimer
)


class Intent(enum.Enum):
    """What a client last asked of a running guest; it overrides the exit table."""

    NONE = "none"
    STOP = "stop"
    RESTART = "restart"


# --------------------------------------------------------------------------------------
# The machine


class InvalidTransition(Exception):
    """The event makes no sense in the current state (e.g. reboot a stopped guest).

    The actor turns it into :class:`supervisor.errors.InvalidStateError` for the client.
    """

    def __init__(self, state: State, event: object) -> None:
        super().__init__(f"cannot {_event_name(event)} a guest that is {state.value}")
        self.state = state
        self.event = event


def _event_name(event: object) -> str:
    return type(event).__name__.lower()


@attrs.define(repr=False)
class Lifecycle(Record):
    """One guest's lifecycle state and history.

    Args:
        policy: the guest's lifecycle policy.
    """

    policy: Policy = attrs.field(factory=Policy)
    state: State = State.SHUTOFF
    reason: str = "defined"
    intent: Intent = Intent.NONE
    boot_count: int = 0
    last_exit: ExitStatus | None = None
    last_exit_at: float | None = None
    last_runtime: float | None = None
    pid: int | None = None
    started_at: float | None = None
    #: When the recent crashes happened, oldest first (a list: an empty deque costs a
    #: block of 64 slots in every one of hundreds of guests).
    crashes: list[float] = attrs.field(factory=list)
    #: Launches in a row that the host failed (see :attr:`LaunchFailed.host_fault`).
    host_faults: int = 0
    backoff_until: float | None = None
    #: Whether the previous bhyve ended without its vCPUs suspended (signal death), so
    #: the VM must be destroyed before the next launch.
    vm_dirty: bool = False

    # -- public --------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply *event* at time *now* (seconds, any monotonic clock).

        Returns:
            The actions the actor must perform, in order.

        Raises:
            InvalidTransition: the event is a request that makes no sense now.
        """
        handler = _TABLE.get((self.state, type(event)))
        if handler is None:
            if type(event) in _REQUESTS:
                raise InvalidTransition(self.state, event)
            # A stale outcome (a timer that fired after it was cancelled, an exit already
            # handled) is ignored: the actor's I/O is not synchronous with our table.
            return []
        return handler(self, event, now)

    def set_policy(self, policy: Policy) -> None:
        """Adopt a new policy (a redefinition); takes effect at the next decision."""
        self.policy = policy

    def recent_crashes(self, now: float) -> int:
        self._forget_old_crashes(now)
        return len(self.crashes)

    # -- helpers ---------------------------------------------------------------------------

    def _to(self, state: State, reason: str) -> None:
        self.state = state
        self.reason = reason

    def _forget_old_crashes(self, now: float) -> None:
        old = 0
        while old < len(self.crashes) and now - self.crashes[old] > self.policy.crash_window:
            old += 1
        del self.crashes[:old]

    def _launch(self, reason: str) -> list[Action]:
        self.intent = Intent.NONE
        destroy = self.vm_dirty or reason != "reboot"
        self.vm_dirty = False
        return [Launch(destroy_first=destroy, reason=reason)]

    def _record_exit(self, event: Exited, now: float) -> None:
        self.last_exit = event.status
        self.last_exit_at = now
        self.last_runtime = event.runtime
        self.pid = None
        self.started_at = None
        # A bhyve that died by a signal never suspended its vCPUs: VM_REINIT would fail
        # with EBUSY, so the next launch must destroy the VM first.
        if event.status.signal is not None or not event.status.known:
            self.vm_dirty = True

    def _stopped(self, reason: str, *, keep_vm: bool = False) -> list[Action]:
        self.intent = Intent.NONE
        self._to(State.SHUTOFF, reason)
        self.vm_dirty = keep_vm
        return [CancelTimer(Timer.STOP), CancelTimer(Timer.KILL), Cleanup(keep_vm=keep_vm)]

    def _host_fault(self, reason: str, now: float) -> list[Action]:
        # Not the guest's doing: it is retried, with a growing delay, until the host
        # recovers (space freed), whatever the crash policy, and it never uses up the
        # crash limit. A client stops the retries with shutdown or destroy.
        self.intent = Intent.NONE
        self.host_faults += 1
        first = max(HOST_FAULT_RETRY, self.policy.restart_backoff)
        return [
            CancelTimer(Timer.STOP),
            CancelTimer(Timer.KILL),
            *self._back_off(
                f"{reason}; the host's fault, retrying",
                first,
                self.host_faults,
                max(first, self.policy.restart_backoff_max),
                now,
            ),
        ]

    def _back_off(
        self, what: str, first: float, attempt: int, cap: float, now: float
    ) -> list[Action]:
        """Wait before launching again: *first* seconds, doubled for each further
        *attempt*, at most *cap*."""
        delay = min(first * 2 ** (attempt - 1), cap)
        self.backoff_until = now + delay
        self._to(State.BACKOFF, f"{what} in {delay:g} s")
        return [Cleanup(), ArmTimer(Timer.BACKOFF, delay)]

    def _crashed(self, reason: str, now: float) -> list[Action]:
        self.intent = Intent.NONE
        actions: list[Action] = [CancelTimer(Timer.STOP), CancelTimer(Timer.KILL)]
        self.crashes.append(now)
        self._forget_old_crashes(now)
        policy = self.policy
        if policy.on_crash is OnCrash.RESTART:
            if len(self.crashes) >= policy.crash_limit:
                self._to(
                    State.FATAL,
                    f"{reason}; {len(self.crashes)} crashes in "
                    f"{policy.crash_window:g} s (limit {policy.crash_limit})",
                )
                return [*actions, Cleanup()]
            return [
                *actions,
                *self._back_off(
                    f"{reason}; restarting",
                    policy.restart_backoff,
                    len(self.crashes),
                    policy.restart_backoff_max,
                    now,
                ),
            ]
        keep = policy.on_crash is OnCrash.PRESERVE
        self._to(State.CRASHED, reason)
        self.vm_dirty = self.vm_dirty or keep
        return [*actions, Cleanup(keep_vm=keep)]


# --------------------------------------------------------------------------------------
# Transition functions, one per (state, event) pair that means something.


def _start_cold(m: Lifecycle, _e: Start, _now: float) -> list[Action]:
    if m.state is State.FATAL:
        m.crashes.clear()
    m.backoff_until = None
    m._to(State.STARTING, "start requested")
    return [CancelTimer(Timer.BACKOFF), *m._launch("start")]


def _clear(m: Lifecycle, _e: Clear, _now: float) -> list[Action]:
    m.crashes.clear()
    m.backoff_until = None
    m._to(State.SHUTOFF, "cleared")
    return [CancelTimer(Timer.BACKOFF)]


def _stop_idle(m: Lifecycle, _e: Shutdown | Destroy, _now: float) -> list[Action]:
    # Stopping a guest that is waiting to restart just calls the restart off.
    m.backoff_until = None
    m.host_faults = 0
    m._to(State.SHUTOFF, "stop requested while waiting to restart")
    return [CancelTimer(Timer.BACKOFF)]


def _launched(m: Lifecycle, e: Launched, now: float) -> list[Action]:
    m.pid = e.pid
    m.host_faults = 0
    m.started_at = now
    m.boot_count += 1
    was = m.state
    m._to(State.RUNNING, "booted" if was is State.STARTING else "rebooted")
    return []


def _adopted(m: Lifecycle, e: Adopted, now: float) -> list[Action]:
    m.pid = e.pid
    m.started_at = now - max(0.0, e.uptime)
    m.boot_count = max(e.boot_count, 1)
    # A stop or reboot the earlier daemon started goes on: its power-button press is not
    # repeated (a second press can cancel the first), only the escalation is re-armed.
    if e.resume == "stopping":
        m.intent = Intent.STOP
        m._to(State.STOPPING, "stopping (adopted during a shutdown)")
        return [ArmTimer(Timer.STOP, m.policy.stop_timeout)]
    if e.resume == "rebooting":
        m.intent = Intent.RESTART
        m._to(State.REBOOTING, "rebooting (adopted during a reboot)")
        return [ArmTimer(Timer.STOP, m.policy.stop_timeout)]
    m.intent = Intent.NONE
    m._to(State.RUNNING, "running (adopted after a daemon restart)")
    return []


def _launch_failed(m: Lifecycle, e: LaunchFailed, now: float) -> list[Action]:
    if m.pid is not None:
        return []  # stale: a bhyve is running, so that launch did not fail
    m.last_exit = e.status
    m.last_exit_at = now
    m.vm_dirty = True
    if m.intent is Intent.STOP:
        return m._stopped(f"launch abandoned: {e.reason}")
    if e.host_fault:
        return m._host_fault(f"launch failed: {e.reason}", now)
    return m._crashed(f"launch failed: {e.reason}", now)


def _shutdown_running(m: Lifecycle, e: Shutdown, _now: float) -> list[Action]:
    m.intent = Intent.STOP
    m._to(State.STOPPING, "shutdown requested")
    timeout = m.policy.stop_timeout if e.timeout is None else e.timeout
    return [PressPowerButton(), ArmTimer(Timer.STOP, timeout)]


def _shutdown_starting(m: Lifecycle, _e: Shutdown | Destroy, _now: float) -> list[Action]:
    # During the loader or right after spawn a power button means nothing yet: abandon.
    m.intent = Intent.STOP
    m._to(State.STOPPING, "stop requested during start")
    return [CancelLaunch()]


def _destroy_active(m: Lifecycle, _e: Destroy, _now: float) -> list[Action]:
    m.intent = Intent.STOP
    m._to(State.STOPPING, "destroy requested")
    return [CancelTimer(Timer.STOP), ForcePoweroff(), ArmTimer(Timer.KILL, m.policy.kill_timeout)]


def _shutdown_again(m: Lifecycle, _e: Shutdown, _now: float) -> list[Action]:
    # One ACPI press only: a second SIGTERM cancels the shutdown of some guests
    # (illumos), so a repeated request just keeps waiting.
    return []


def _reboot_running(m: Lifecycle, _e: Reboot, _now: float) -> list[Action]:
    m.intent = Intent.RESTART
    m._to(State.REBOOTING, "reboot requested")
    return [PressPowerButton(), ArmTimer(Timer.STOP, m.policy.stop_timeout)]


def _reset_running(m: Lifecycle, _e: Reset, _now: float) -> list[Action]:
    m.intent = Intent.RESTART
    m._to(State.REBOOTING, "reset requested")
    return [ForceReset(), ArmTimer(Timer.KILL, m.policy.kill_timeout)]


def _stop_timer(m: Lifecycle, e: TimerFired, _now: float) -> list[Action]:
    if e.timer is Timer.STOP:
        if m.intent is Intent.RESTART:
            # The guest ignored the button: a reboot becomes a hard reset.
            m.reason = "reboot timed out; forcing a reset"
            return [ForceReset(), ArmTimer(Timer.KILL, m.policy.kill_timeout)]
        m.reason = "shutdown timed out; forcing poweroff"
        return [ForcePoweroff(), ArmTimer(Timer.KILL, m.policy.kill_timeout)]
    if e.timer is Timer.KILL:
        m.reason = "bhyve did not exit; killing it"
        return [Kill()]
    return []


def _backoff_over(m: Lifecycle, e: TimerFired, _now: float) -> list[Action]:
    if e.timer is not Timer.BACKOFF:
        return []
    m.backoff_until = None
    if m.host_faults:
        m._to(State.STARTING, "retrying the launch")
        return m._launch("retry after a host fault")
    m._to(State.STARTING, "restarting after a crash")
    return m._launch("restart after crash")


def _exited(m: Lifecycle, e: Exited, now: float) -> list[Action]:
    m._record_exit(e, now)
    text = e.status.describe()
    cancel: list[Action] = [CancelTimer(Timer.STOP), CancelTimer(Timer.KILL)]
    if m.intent is Intent.STOP:
        return m._stopped(f"stopped ({text})")
    if m.intent is Intent.RESTART:
        m._to(State.REBOOTING, f"restarting ({text})")
        return [*cancel, *m._launch("reboot" if e.status.code == 0 else "restart")]
    outcome = classify(e.status, e.runtime, m.policy.start_grace)
    if outcome is Outcome.REBOOT:
        if m.policy.on_reboot is OnReboot.DESTROY:
            return m._stopped(f"guest rebooted ({text}); on_reboot=destroy")
        m._to(State.REBOOTING, f"guest rebooted ({text})")
        return [*cancel, *m._launch("reboot")]
    if outcome is Outcome.POWEROFF:
        if m.policy.on_poweroff is OnPoweroff.RESTART:
            m._to(State.REBOOTING, f"guest powered off ({text}); on_poweroff=restart")
            return [*cancel, Cleanup(), *m._launch("restart after poweroff")]
        return m._stopped(f"guest powered off ({text})")
    if e.status.code == 1:
        text += f" after {e.runtime:.2f} s: treated as a failed start"
    return m._crashed(f"crashed ({text})", now)


def _shutdown_rebooting(m: Lifecycle, e: Shutdown, now: float) -> list[Action]:
    if m.pid is None:
        return _shutdown_starting(m, e, now)
    # The power button was already pressed for the reboot; now the exit means a stop.
    m.intent = Intent.STOP
    m._to(State.STOPPING, "shutdown requested during reboot")
    return []


def _destroy_rebooting(m: Lifecycle, e: Destroy, now: float) -> list[Action]:
    if m.pid is None:
        return _shutdown_starting(m, e, now)
    return _destroy_active(m, e, now)


def _destroy_stopping(m: Lifecycle, e: Destroy, now: float) -> list[Action]:
    if m.pid is None:
        return []  # a launch is already being abandoned
    return _destroy_active(m, e, now)


def _restart_rebooting(m: Lifecycle, e: Reboot | Reset, now: float) -> list[Action]:
    if m.pid is None:
        return []  # already coming back up
    if isinstance(e, Reset):
        return _reset_running(m, e, now)
    return []  # the button has been pressed once; pressing again could cancel it


_REQUESTS = (Start, Shutdown, Destroy, Reboot, Reset, Clear)

_Transition = Callable[[Lifecycle, Any, float], list[Action]]
_TABLE: dict[tuple[State, type], _Transition] = {}


def _nothing(_m: Lifecycle, _e: object, _now: float) -> list[Action]:
    return []


def _row(states: Sequence[State], event: type, fn: _Transition) -> None:
    for s in states:
        _TABLE[(s, event)] = fn


_IDLE = (State.SHUTOFF, State.CRASHED, State.FATAL, State.BACKOFF)
_row(_IDLE, Start, _start_cold)
_row((State.CRASHED, State.FATAL, State.BACKOFF), Clear, _clear)
_row((State.BACKOFF,), Shutdown, _stop_idle)
_row((State.BACKOFF,), Destroy, _stop_idle)
_row((State.BACKOFF,), TimerFired, _backoff_over)

_row((State.STARTING, State.REBOOTING), Launched, _launched)
_row((State.SHUTOFF,), Adopted, _adopted)
_row((State.STARTING, State.REBOOTING, State.STOPPING), LaunchFailed, _launch_failed)
_row((State.STARTING,), Shutdown, _shutdown_starting)
_row((State.STARTING,), Destroy, _shutdown_starting)

_row((State.RUNNING,), Shutdown, _shutdown_running)
_row((State.RUNNING,), Reboot, _reboot_running)
_row((State.RUNNING,), Reset, _reset_running)
_row((State.REBOOTING,), Reboot, _restart_rebooting)
_row((State.REBOOTING,), Reset, _restart_rebooting)
_row((State.RUNNING,), Destroy, _destroy_active)
_row((State.STOPPING,), Destroy, _destroy_stopping)
_row((State.REBOOTING,), Destroy, _destroy_rebooting)
_row((State.STOPPING,), Shutdown, _shutdown_again)
_row((State.RUNNING, State.STOPPING, State.REBOOTING), Exited, _exited)
_row((State.STOPPING, State.REBOOTING), TimerFired, _stop_timer)
_row((State.REBOOTING,), Shutdown, _shutdown_rebooting)
# Requests that are already satisfied are harmless repeats, not errors.
_row((State.RUNNING, State.STARTING, State.REBOOTING), Start, _nothing)
_row((State.SHUTOFF,), Shutdown, _nothing)
_row((State.SHUTOFF,), Destroy, _nothing)
_row((State.SHUTOFF,), Clear, _nothing)
