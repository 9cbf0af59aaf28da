"""The clock-offset arithmetic of domain.get_time / domain.set_time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from supervisor.api.guestops import epoch_to_rtc, host_utc_offset, rtc_to_epoch


@pytest.fixture
def host_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's zone: Central European, UTC+1 in winter and UTC+2 in summer."""
    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


WINTER = 1700000000  # 2023-11-14 22:13:20 UTC
SUMMER = 1690000000  # 2023-07-22 04:26:40 UTC


def test_offsets_follow_the_host_zone(host_tz: None) -> None:
    assert host_utc_offset(WINTER) == 3600
    assert host_utc_offset(SUMMER) == 7200


def test_localtime_rtc_holds_local_wall_time(host_tz: None) -> None:
    assert epoch_to_rtc(WINTER, "localtime") == WINTER + 3600
    assert rtc_to_epoch(WINTER + 3600, "localtime") == WINTER
    assert epoch_to_rtc(SUMMER, "localtime") == SUMMER + 7200
    assert rtc_to_epoch(SUMMER + 7200, "localtime") == SUMMER


def test_utc_rtc_is_the_epoch(host_tz: None) -> None:
    assert epoch_to_rtc(WINTER, "utc") == WINTER
    assert rtc_to_epoch(SUMMER, "utc") == SUMMER


def test_methods_and_who_may_call_them() -> None:
    from types import SimpleNamespace
    from typing import Any

    from supervisor.api import guestops
    from supervisor.rpc.dispatch import Registry

    reg = Registry()
    daemon: Any = SimpleNamespace(host=None)
    guestops.register(reg, daemon)
    access = {name: reg.get(name).access for name in reg.names()}  # type: ignore[union-attr]
    assert access == {
        "connect.get_cpu_model_names": "ro",
        "connect.get_max_vcpus": "ro",
        "domain.get_cpu_stats": "ro",
        "domain.get_max_memory": "ro",
        "domain.get_max_vcpus": "ro",
        "domain.get_time": "ro",
        "domain.get_vcpus": "ro",
        "domain.inject_nmi": "rw",
        "domain.memory_peek": "rw",  # guest memory may hold secrets
        "domain.memory_stats": "ro",
        "domain.set_time": "rw",
    }
