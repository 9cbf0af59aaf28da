"""The guest actor's mailbox and work queue (no bhyve needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
import trio
import trio.testing

from supervisor.actors import lifecycle as lc
from supervisor.actors.guest import GuestActor, GuestPaths, LaunchPlan, _Queue
from supervisor.errors import GuestBusyError, InvalidStateError, SupervisorError
from supervisor.events import EventBus
from supervisor.host import Host


async def test_queue_hands_items_over_in_order_and_ends_when_closed() -> None:
    q: _Queue[int] = _Queue()
    got: list[int | None] = []

    async def consumer() -> None:
        while (item := await q.get()) is not None:
            got.append(item)
        got.append(None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(3):
            assert q.put(i)
        await trio.testing.wait_all_tasks_blocked()
        assert q.put(3)
        q.close()
        assert not q.put(4)  # closed: refused, never queued
    assert got == [0, 1, 2, 3, None]


async def test_queue_refuses_beyond_its_limit() -> None:
    q: _Queue[str] = _Queue(limit=2)
    assert q.put("a")
    assert q.put("b")
    assert not q.put("c")
    assert await q.get() == "a"
    assert q.put("c")
    assert [await q.get(), await q.get()] == ["b", "c"]


async def test_a_cancelled_get_leaves_the_queue_usable() -> None:
    q: _Queue[int] = _Queue()
    with trio.move_on_after(0.01):
        await q.get()
    assert q.put(7)
    assert await q.get() == 7


def _actor(tmp_path: Path, mailbox_size: int) -> GuestActor:
    def no_plan() -> LaunchPlan:
        raise AssertionError("nothing is launched here")

    return GuestActor(
        "web1",
        plan_factory=no_plan,
        policy=lc.Policy(),
        host=Host(root=str(tmp_path)),
        paths=GuestPaths("/var/run/bhyvesupd", "/var/log/bhyvesupd"),
        bus=EventBus(),
        console_path=None,
        mailbox_size=mailbox_size,
        env={},
    )


async def test_a_full_mailbox_makes_the_caller_busy_at_once(tmp_path: Path) -> None:
    actor = _actor(tmp_path, mailbox_size=2)  # its task is not running: nothing is taken
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(actor.request, lc.Clear())
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(1), pytest.raises(GuestBusyError, match="web1 is busy"):
            await actor.request(lc.Clear())
        nursery.cancel_scope.cancel()


async def test_a_closed_mailbox_says_the_guest_is_being_removed(tmp_path: Path) -> None:
    actor = _actor(tmp_path, mailbox_size=2)
    actor.close()
    with pytest.raises(InvalidStateError, match="being removed"):
        await actor.request(lc.Start())


async def test_requests_are_answered_in_order_by_the_running_actor(tmp_path: Path) -> None:
    actor = _actor(tmp_path, mailbox_size=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        with pytest.raises(InvalidStateError, match="cannot reboot a guest that is shutoff"):
            await actor.request(lc.Reboot())
        await actor.request(lc.Clear())
        assert actor.state is lc.State.SHUTOFF
        actor.close()


def _actor_noting_launches(tmp_path: Path, seen: list[dict[str, object]]) -> GuestActor:
    """An actor whose every launch notes the logging context it ran in, then fails."""

    class Hook:
        async def before_launch(self, name: str, plan: LaunchPlan) -> None:
            seen.append(structlog.contextvars.get_contextvars())
            raise SupervisorError("no taps today")

        async def after_stop(self, name: str, plan: LaunchPlan) -> None:
            pass

    return GuestActor(
        "web1",
        plan_factory=lambda: LaunchPlan(loader=None, bhyve=("bhyve", "web1")),
        policy=lc.Policy(),
        host=Host(root=str(tmp_path)),
        paths=GuestPaths("/var/run/bhyvesupd", "/var/log/bhyvesupd"),
        bus=EventBus(),
        console_path=None,
        hooks=[Hook()],
        env={},
    )


@pytest.mark.parametrize("asker", ["adoption", "client"])
async def test_the_guests_work_is_logged_under_its_name_whoever_asked_for_it(
    tmp_path: Path, asker: str
) -> None:
    # The worker starts with the guest's first action, which may come from a task that
    # is not the actor's: adoption applies what it found from its own task, and a
    # client's request to a waiting actor is taken in the client's task. What the
    # launch logs names the guest; a client's request brings none of its own bindings.
    seen: list[dict[str, object]] = []
    actor = _actor_noting_launches(tmp_path, seen)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await trio.testing.wait_all_tasks_blocked()
        with structlog.contextvars.bound_contextvars(caller="someone else"):
            if asker == "adoption":
                actor._apply(lc.Start())
            else:
                await actor.request(lc.Start())
        with trio.fail_after(5):
            await actor.wait_until(lambda s: s is not lc.State.STARTING, 5)
        actor.close()
    assert actor.last_error == "no taps today"
    assert [ctx["guest"] for ctx in seen] == ["web1"]
    if asker == "client":
        assert seen == [{"guest": "web1"}]


async def test_a_waiting_actor_takes_a_request_before_any_other_task_runs(
    tmp_path: Path,
) -> None:
    # What lets a host's autostart request all its guests in one step of the loop.
    actor = _actor(tmp_path, mailbox_size=4)
    ran: list[str] = []

    async def bystander() -> None:
        ran.append("bystander")

    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(bystander)
        await actor.request(lc.Clear())
        assert ran == []
        assert actor.state is lc.State.SHUTOFF
        with pytest.raises(InvalidStateError, match="cannot reboot a guest that is shutoff"):
            await actor.request(lc.Reboot())
        actor.close()
    assert ran == ["bystander"]


def _failing_actor(tmp_path: Path) -> GuestActor:
    def fail(before: lc.State, after: lc.State) -> None:
        raise RuntimeError("state counter broke")

    actor = _actor(tmp_path, mailbox_size=4)
    actor.on_state = fail
    return actor


async def test_an_actor_that_fails_on_a_request_tells_that_caller_and_every_later_one(
    tmp_path: Path,
) -> None:
    actor = _failing_actor(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(1), pytest.raises(InvalidStateError, match="actor failed"):
            await actor.request(lc.Start())
        with trio.fail_after(1), pytest.raises(InvalidStateError, match="state counter broke"):
            await actor.request(lc.Destroy())
    # run() returned on its own, and nothing reached this nursery.
    assert actor.last_error is not None
    assert "state counter broke" in actor.last_error


async def test_requests_queued_behind_the_one_that_failed_are_answered_not_left_waiting(
    tmp_path: Path,
) -> None:
    actor = _failing_actor(tmp_path)
    errors: list[str] = []

    async def ask(event: lc.Event) -> None:
        try:
            await actor.request(event)
        except InvalidStateError as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        # Queued before the actor runs: taken by its loop, in order.
        for event in (lc.Start(), lc.Destroy(), lc.Clear()):
            nursery.start_soon(ask, event)
            await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(1):
            await nursery.start(actor.run)
            await trio.testing.wait_all_tasks_blocked()
    assert len(errors) == 3
    assert all("actor failed (RuntimeError('state counter broke'))" in e for e in errors)
