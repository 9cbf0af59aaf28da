from __future__ import annotations

from supervisor.events import Event, EventBus


def test_events_reach_every_subscriber_and_slow_ones_learn_what_they_lost() -> None:
    bus = EventBus()
    fast: list[Event] = []
    slow: list[Event] = []
    room = {"slow": 1}

    def slow_deliver(e: Event) -> bool:
        if room["slow"] <= 0:
            return False
        room["slow"] -= 1
        slow.append(e)
        return True

    bus.subscribe(lambda e: fast.append(e) is None)
    bus.subscribe(slow_deliver)
    for i in range(4):
        bus.publish("guest.state", name="a", n=i)
    assert [e["n"] for e in fast] == [0, 1, 2, 3]
    assert [e["n"] for e in slow] == [0]
    room["slow"] = 5
    bus.publish("guest.state", name="a", n=4)
    assert slow[1] == {"type": "events.lost", "count": 3}
    assert slow[2]["n"] == 4


def test_unsubscribe_and_history() -> None:
    bus = EventBus(history_size=2)
    got: list[Event] = []
    sub = bus.subscribe(lambda e: got.append(e) is None)
    bus.publish("x")
    bus.unsubscribe(sub)
    bus.publish("y")
    bus.publish("z")
    assert [e["type"] for e in got] == ["x"]
    assert [e["type"] for e in bus.history] == ["y", "z"]
    assert bus.subscribers == 0
