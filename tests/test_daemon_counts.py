"""The daemon's count of guests by state, and the end of autostart that waits on it."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from supervisor.actors import lifecycle as lc
from supervisor.config import load_config
from supervisor.daemon import Daemon
from supervisor.host import Host
from supervisor.vmm import caps

S = lc.State


def _daemon(tmp_path: Path) -> Daemon:
    return Daemon(load_config(None), Host(root=str(tmp_path)), caps.DEFAULT)


async def test_autostart_ends_when_the_last_guest_stops_starting(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    daemon.state_counts.update({S.STARTING: 2, S.SHUTOFF: 1})
    ended: list[float] = []

    async def wait() -> None:
        await daemon._launches_done(stall=60.0)
        ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        daemon._count_state(S.STARTING, S.RUNNING)
        await trio.testing.wait_all_tasks_blocked()
        assert ended == []  # one is still starting
        daemon._count_state(S.STARTING, S.BACKOFF)
        await trio.testing.wait_all_tasks_blocked()
        assert ended != []
    assert daemon.status()["states"] == {"running": 1, "backoff": 1, "shutoff": 1}


async def test_autostart_gives_up_only_after_a_stall_without_progress(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    daemon = _daemon(tmp_path)
    daemon.state_counts[S.STARTING] = 3
    start = trio.current_time()
    ended: list[float] = []

    async def wait() -> None:
        await daemon._launches_done(stall=10.0)
        ended.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        # Progress every 8 s keeps it waiting past any single stall window...
        for _ in range(2):
            await trio.sleep(8.0)
            daemon._count_state(S.STARTING, S.RUNNING)
        # ...then one guest stays starting: it gives up 10 s after the last progress.
    assert ended == [26.0]
    assert daemon.state_counts[S.STARTING] == 1
