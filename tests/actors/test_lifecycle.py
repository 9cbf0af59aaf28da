"""The lifecycle table: every state x event, and the scenarios users meet."""

from __future__ import annotations

import signal

import pytest

from supervisor.actors.lifecycle import (
    Adopted,
    ArmTimer,
    CancelLaunch,
    CancelTimer,
    Cleanup,
    Clear,
    Destroy,
    Event,
    Exited,
    ExitStatus,
    ForcePoweroff,
    ForceReset,
    InvalidTransition,
    Kill,
    Launch,
    Launched,
    LaunchFailed,
    Lifecycle,
    OnCrash,
    OnPoweroff,
    OnReboot,
    Policy,
    PressPowerButton,
    Reboot,
    Reset,
    Shutdown,
    Start,
    State,
    Timer,
    TimerFired,
)

CODE = ExitStatus


def running(policy: Policy | None = None, *, now: float = 0.0) -> Lifecycle:
    m = Lifecycle(policy=policy or Policy())
    m.handle(Start(), now)
    m.handle(Launched(pid=100), now)
    assert m.state is State.RUNNING
    return m


def kinds(actions: list[object]) -> list[type]:
    return [type(a) for a in actions]


# -- exit codes -------------------------------------------------------------------------


def test_start_launches_after_destroying_leftovers() -> None:
    m = Lifecycle()
    actions = m.handle(Start(), 0.0)
    assert m.state is State.STARTING
    assert Launch(destroy_first=True, reason="start") in actions
    m.handle(Launched(pid=42), 0.1)
    assert (m.state, m.pid, m.boot_count) == (State.RUNNING, 42, 1)


def test_guest_reboot_exit_0_restarts_without_destroying() -> None:
    m = running()
    actions = m.handle(Exited(CODE(code=0), runtime=10.0), 10.0)
    assert m.state is State.REBOOTING
    assert Launch(destroy_first=False, reason="reboot") in actions
    assert not any(isinstance(a, Cleanup) for a in actions)
    m.handle(Launched(pid=101), 10.1)
    assert (m.state, m.boot_count, m.reason) == (State.RUNNING, 2, "rebooted")


def test_on_reboot_destroy_stays_off() -> None:
    m = running(Policy(on_reboot=OnReboot.DESTROY))
    actions = m.handle(Exited(CODE(code=0), runtime=10.0), 10.0)
    assert m.state is State.SHUTOFF
    assert Cleanup() in actions


@pytest.mark.parametrize("code", [1, 2])
def test_poweroff_and_halt_follow_on_poweroff(code: int) -> None:
    m = running()
    actions = m.handle(Exited(CODE(code=code), runtime=30.0), 30.0)
    assert m.state is State.SHUTOFF
    assert Cleanup(keep_vm=False) in actions
    assert m.last_exit == CODE(code=code)

    m = running(Policy(on_poweroff=OnPoweroff.RESTART))
    actions = m.handle(Exited(CODE(code=code), runtime=30.0), 30.0)
    assert m.state is State.REBOOTING
    assert any(isinstance(a, Launch) for a in actions)


def test_exit_1_right_after_start_is_a_failed_start_not_a_poweroff() -> None:
    m = running()
    m.handle(Exited(CODE(code=1), runtime=0.05), 0.05)
    assert m.state is State.CRASHED
    assert "failed start" in m.reason


@pytest.mark.parametrize(
    "status",
    [CODE(code=3), CODE(code=4), CODE(code=64), CODE(code=100), CODE(signal=signal.SIGABRT)],
    ids=["triple-fault", "error", "usage", "suspend", "sigabrt"],
)
def test_crashes_follow_on_crash_destroy_by_default(status: ExitStatus) -> None:
    m = running()
    actions = m.handle(Exited(status, runtime=5.0), 5.0)
    assert m.state is State.CRASHED
    assert Cleanup(keep_vm=False) in actions
    assert status.describe() in m.reason


def test_on_crash_preserve_keeps_the_vm_for_inspection() -> None:
    m = running(Policy(on_crash=OnCrash.PRESERVE))
    actions = m.handle(Exited(CODE(code=3), runtime=5.0), 5.0)
    assert m.state is State.CRASHED
    assert Cleanup(keep_vm=True) in actions
    # ...and the next start destroys it first.
    assert Launch(destroy_first=True, reason="start") in m.handle(Start(), 6.0)


def test_crash_loop_backs_off_exponentially_then_goes_fatal() -> None:
    policy = Policy(
        on_crash=OnCrash.RESTART,
        restart_backoff=1.0,
        restart_backoff_max=3.0,
        crash_limit=4,
        crash_window=100.0,
    )
    m = running(policy)
    now = 0.0
    delays = []
    for _ in range(3):
        now += 1.0
        actions = m.handle(Exited(CODE(code=3), runtime=1.0), now)
        assert m.state is State.BACKOFF
        timer = next(a for a in actions if isinstance(a, ArmTimer))
        assert timer.timer is Timer.BACKOFF
        delays.append(timer.delay)
        now += timer.delay
        assert Launch(destroy_first=True, reason="restart after crash") in m.handle(
            TimerFired(Timer.BACKOFF), now
        )
        m.handle(Launched(pid=200), now)
    assert delays == [1.0, 2.0, 3.0]  # doubled, then capped
    m.handle(Exited(CODE(code=3), runtime=1.0), now + 1)
    assert m.state is State.FATAL
    assert "4 crashes" in m.reason
    # FATAL is left only by a client: start (which forgets the history) or clear.
    with pytest.raises(InvalidTransition):
        m.handle(Reboot(), now + 2)
    m.handle(Start(), now + 2)
    assert m.recent_crashes(now + 2) == 0


def test_crashes_outside_the_window_are_forgotten() -> None:
    policy = Policy(on_crash=OnCrash.RESTART, crash_limit=2, crash_window=10.0)
    m = running(policy)
    m.handle(Exited(CODE(code=4), runtime=1.0), 1.0)
    m.handle(TimerFired(Timer.BACKOFF), 2.0)
    m.handle(Launched(pid=1), 2.0)
    m.handle(Exited(CODE(code=4), runtime=1.0), 50.0)
    assert m.state is State.BACKOFF


def test_signal_death_marks_the_vm_dirty_so_the_next_launch_destroys_it() -> None:
    m = running(Policy(on_crash=OnCrash.RESTART))
    m.handle(Exited(CODE(signal=signal.SIGKILL), runtime=5.0), 5.0)
    actions = m.handle(TimerFired(Timer.BACKOFF), 7.0)
    assert Launch(destroy_first=True, reason="restart after crash") in actions


# -- requests ---------------------------------------------------------------------------


def test_shutdown_presses_once_then_escalates_then_kills() -> None:
    m = running(Policy(stop_timeout=120.0, kill_timeout=10.0))
    assert m.handle(Shutdown(), 1.0) == [PressPowerButton(), ArmTimer(Timer.STOP, 120.0)]
    assert m.state is State.STOPPING
    assert m.handle(Shutdown(), 2.0) == []  # never a second ACPI press
    assert m.handle(TimerFired(Timer.STOP), 121.0) == [
        ForcePoweroff(),
        ArmTimer(Timer.KILL, 10.0),
    ]
    assert m.handle(TimerFired(Timer.KILL), 131.0) == [Kill()]
    actions = m.handle(Exited(CODE(signal=signal.SIGKILL), runtime=131.0), 131.0)
    assert m.state is State.SHUTOFF
    assert Cleanup() in actions


def test_shutdown_timeout_can_be_given_per_request() -> None:
    m = running()
    assert ArmTimer(Timer.STOP, 5.0) in m.handle(Shutdown(timeout=5.0), 1.0)


def test_sigterm_before_acpi_is_a_stop_not_a_crash() -> None:
    m = running(Policy(on_crash=OnCrash.RESTART))
    m.handle(Shutdown(), 0.1)
    m.handle(Exited(CODE(signal=signal.SIGTERM), runtime=0.1), 0.1)
    assert m.state is State.SHUTOFF
    assert m.recent_crashes(0.1) == 0
    # bhyve died without suspending its vCPUs: the next start must destroy the VM.
    assert Launch(destroy_first=True, reason="start") in m.handle(Start(), 1.0)


def test_destroy_forces_at_once() -> None:
    m = running()
    assert m.handle(Destroy(), 1.0) == [
        CancelTimer(Timer.STOP),
        ForcePoweroff(),
        ArmTimer(Timer.KILL, 10.0),
    ]
    m.handle(Exited(CODE(code=1), runtime=1.0), 1.5)
    assert m.state is State.SHUTOFF


def test_reboot_restarts_whatever_the_exit() -> None:
    m = running()
    assert m.handle(Reboot(), 1.0) == [PressPowerButton(), ArmTimer(Timer.STOP, 120.0)]
    assert m.state is State.REBOOTING
    # The guest answered the power button by powering off: still comes back.
    actions = m.handle(Exited(CODE(code=1), runtime=3.0), 3.0)
    assert any(isinstance(a, Launch) for a in actions)
    m.handle(Launched(pid=7), 3.1)
    assert (m.state, m.boot_count) == (State.RUNNING, 2)


def test_reboot_of_a_guest_ignoring_acpi_becomes_a_reset() -> None:
    m = running()
    m.handle(Reboot(), 1.0)
    assert ForceReset() in m.handle(TimerFired(Timer.STOP), 121.0)


def test_reset_forces_and_restarts() -> None:
    m = running()
    assert m.handle(Reset(), 1.0) == [ForceReset(), ArmTimer(Timer.KILL, 10.0)]
    actions = m.handle(Exited(CODE(code=0), runtime=1.0), 1.0)
    assert Launch(destroy_first=False, reason="reboot") in actions


def test_stop_during_launch_abandons_it() -> None:
    m = Lifecycle()
    m.handle(Start(), 0.0)
    assert m.handle(Shutdown(), 0.1) == [CancelLaunch()]
    assert m.state is State.STOPPING
    m.handle(LaunchFailed(reason="cancelled"), 0.2)
    assert m.state is State.SHUTOFF


def test_failed_launch_is_a_crash() -> None:
    m = Lifecycle(policy=Policy(on_crash=OnCrash.RESTART))
    m.handle(Start(), 0.0)
    m.handle(LaunchFailed(reason="bhyveload exited 1", status=CODE(code=1)), 0.5)
    assert m.state is State.BACKOFF
    assert "bhyveload exited 1" in m.reason


def test_shutdown_while_waiting_to_restart_calls_it_off() -> None:
    m = running(Policy(on_crash=OnCrash.RESTART))
    m.handle(Exited(CODE(code=3), runtime=1.0), 1.0)
    assert m.handle(Shutdown(), 1.5) == [CancelTimer(Timer.BACKOFF)]
    assert m.state is State.SHUTOFF
    assert m.handle(TimerFired(Timer.BACKOFF), 2.0) == []  # a stale timer is ignored


def test_clear_resets_crashed_and_fatal() -> None:
    m = running()
    m.handle(Exited(CODE(code=3), runtime=5.0), 5.0)
    m.handle(Clear(), 6.0)
    assert m.state is State.SHUTOFF


# -- the whole table -----------------------------------------------------------------------

REQUESTS: list[Event] = [Start(), Shutdown(), Destroy(), Reboot(), Reset(), Clear()]
OUTCOMES: list[Event] = [
    Launched(pid=5),
    LaunchFailed(reason="x"),
    Exited(CODE(code=0), runtime=9.0),
    Exited(CODE(code=1), runtime=9.0),
    Exited(CODE(code=2), runtime=9.0),
    Exited(CODE(code=3), runtime=9.0),
    Exited(CODE(code=4), runtime=9.0),
    Exited(CODE(signal=9), runtime=9.0),
    TimerFired(Timer.STOP),
    TimerFired(Timer.KILL),
    TimerFired(Timer.BACKOFF),
    Adopted(pid=7, boot_count=3, uptime=60.0),
]


def machine_in(state: State) -> Lifecycle:
    """Drive a fresh machine into *state* through real events."""
    p = Policy(on_crash=OnCrash.RESTART, crash_limit=1)
    m = Lifecycle(policy=p)
    if state is State.SHUTOFF:
        return m
    m.handle(Start(), 0.0)
    if state is State.STARTING:
        return m
    m.handle(Launched(pid=1), 0.0)
    if state is State.RUNNING:
        return m
    if state is State.STOPPING:
        m.handle(Shutdown(), 1.0)
    elif state is State.REBOOTING:
        m.handle(Reboot(), 1.0)
    elif state is State.FATAL:
        m.handle(Exited(CODE(code=3), runtime=9.0), 9.0)
    elif state in (State.BACKOFF, State.CRASHED):
        m.policy = Policy(on_crash=OnCrash.RESTART if state is State.BACKOFF else OnCrash.DESTROY)
        m.handle(Exited(CODE(code=3), runtime=9.0), 9.0)
    assert m.state is state
    return m


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
@pytest.mark.parametrize("event", REQUESTS + OUTCOMES, ids=repr)
def test_every_state_and_event_is_defined(state: State, event: Event) -> None:
    m = machine_in(state)
    refused: InvalidTransition | None = None
    actions = []
    try:
        actions = m.handle(event, 20.0)
    except InvalidTransition as exc:
        refused = exc
    if refused is not None:
        # Only requests may be refused, and the refusal says what and why.
        assert type(event) in {type(r) for r in REQUESTS}
        assert state.value in str(refused)
        assert m.state is state
        return
    # The machine stays consistent: an active guest has a launch or a bhyve to account
    # for, an idle one has neither.
    if not m.state.active:
        assert m.pid is None
    if any(isinstance(a, Launch) for a in actions):
        assert m.state in (State.STARTING, State.REBOOTING)


def test_exit_descriptions() -> None:
    assert CODE(code=3).describe() == "exit 3 (triple fault)"
    assert CODE(signal=9).describe() == "signal 9 (SIGKILL)"
    assert ExitStatus.from_returncode(-6) == CODE(signal=6)
    assert not ExitStatus().known


def test_adoption_takes_over_a_running_bhyve_with_its_history() -> None:
    m = Lifecycle()
    assert m.handle(Adopted(pid=4242, boot_count=3, uptime=60.0), 100.0) == []
    assert (m.state, m.pid, m.boot_count, m.started_at) == (State.RUNNING, 4242, 3, 40.0)
    assert "adopted" in m.reason
    # From then on it is an ordinary running guest: a guest reboot restarts it.
    actions = m.handle(Exited(CODE(code=0), runtime=70.0), 110.0)
    assert m.state is State.REBOOTING
    assert any(isinstance(a, Launch) for a in actions)


def test_adoption_is_only_for_a_guest_the_daemon_has_not_started() -> None:
    m = machine_in(State.RUNNING)
    assert m.handle(Adopted(pid=99, boot_count=1, uptime=1.0), 5.0) == []
    assert m.pid == 1


def test_adoption_during_a_shutdown_escalates_without_a_second_press() -> None:
    m = Lifecycle(policy=Policy(stop_timeout=30.0))
    actions = m.handle(Adopted(pid=5, boot_count=1, uptime=9.0, resume="stopping"), 100.0)
    assert m.state is State.STOPPING
    assert actions == [ArmTimer(Timer.STOP, 30.0)]
    # Any exit now is the stop that was asked for, not a crash.
    m.handle(Exited(CODE(signal=15), runtime=10.0), 101.0)
    assert m.state is State.SHUTOFF


def test_adoption_during_a_reboot_brings_the_guest_back_whatever_its_exit() -> None:
    m = Lifecycle()
    m.handle(Adopted(pid=5, boot_count=2, uptime=9.0, resume="rebooting"), 100.0)
    assert m.state is State.REBOOTING
    actions = m.handle(Exited(CODE(code=1), runtime=10.0), 101.0)
    assert any(isinstance(a, Launch) for a in actions)


# -- launches the host failed ------------------------------------------------------------


@pytest.mark.parametrize("on_crash", [OnCrash.DESTROY, OnCrash.RESTART, OnCrash.PRESERVE])
def test_a_host_fault_is_retried_and_never_counted_as_a_crash(on_crash: OnCrash) -> None:
    policy = Policy(on_crash=on_crash, crash_limit=2, restart_backoff=0.0, restart_backoff_max=8.0)
    m = Lifecycle(policy=policy)
    m.handle(Start(), 0.0)
    delays = []
    for i in range(6):
        actions = m.handle(LaunchFailed(reason="No space left on device", host_fault=True), i)
        assert m.state is State.BACKOFF
        assert "the host's fault" in m.reason
        (arm,) = (a for a in actions if isinstance(a, ArmTimer))
        delays.append(arm.delay)
        assert Cleanup() in actions
        assert m.recent_crashes(i) == 0
        launch = m.handle(TimerFired(Timer.BACKOFF), i + 0.5)
        assert m.state is State.STARTING
        assert m.reason == "retrying the launch"
        assert any(isinstance(a, Launch) for a in launch)
    # Doubling from a floor of one second, capped by restart_backoff_max.
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    m.handle(Launched(pid=7), 10.0)
    assert (m.state, m.host_faults) == (State.RUNNING, 0)


def test_a_guest_fault_still_counts() -> None:
    m = Lifecycle(policy=Policy(on_crash=OnCrash.RESTART, crash_limit=2, restart_backoff=0.0))
    m.handle(Start(), 0.0)
    m.handle(LaunchFailed(reason="bhyveload exited 1", status=CODE(code=1)), 0.1)
    assert m.state is State.BACKOFF
    assert m.recent_crashes(0.1) == 1
    m.handle(TimerFired(Timer.BACKOFF), 0.2)
    m.handle(LaunchFailed(reason="bhyveload exited 1", status=CODE(code=1)), 0.3)
    assert m.state is State.FATAL


def test_stopping_a_guest_that_waits_after_a_host_fault_calls_the_retry_off() -> None:
    m = Lifecycle()
    m.handle(Start(), 0.0)
    m.handle(LaunchFailed(reason="No space left on device", host_fault=True), 0.1)
    actions = m.handle(Destroy(), 0.2)
    assert m.state is State.SHUTOFF
    assert CancelTimer(Timer.BACKOFF) in actions
    assert m.host_faults == 0


def test_a_stop_during_a_launch_the_host_failed_is_a_stop() -> None:
    m = Lifecycle()
    m.handle(Start(), 0.0)
    m.handle(Shutdown(), 0.1)
    m.handle(LaunchFailed(reason="No space left on device", host_fault=True), 0.2)
    assert m.state is State.SHUTOFF
