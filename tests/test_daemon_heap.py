"""The daemon's collector: off while the guests start, on (with the start-up heap
frozen) once they have; a daemon that stayed without one would grow for ever."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from supervisor.daemon import _settle_heap


@pytest.fixture
def collector() -> Iterator[None]:
    was = gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()
        if was:
            gc.enable()


async def test_the_collector_comes_back_once_the_guests_are_started(collector: None) -> None:
    gc.disable()
    daemon: Any = SimpleNamespace(autostarted=trio.Event())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_settle_heap, daemon)
        await trio.sleep(0.05)
        assert not gc.isenabled()  # still starting
        daemon.autostarted.set()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
