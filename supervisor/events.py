"""The daemon's event bus: every guest state change, fanned out to subscribers.

Publishing never blocks: each subscriber has a bounded queue, and a subscriber that falls
behind loses events (counted, and told so once it catches up) rather than slowing the
guest actors down. Event payloads are plain JSON-ready dicts with a stable ``type`` key
(``guest.state``, ``guest.console``, ``daemon.reload`` ...), the vocabulary of the
``events.subscribe`` notifications.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from supervisor._record import Record

Event = dict[str, Any]


@attrs.define(eq=False, repr=False)
class Subscription(Record):
    """One subscriber's queue.

    Args:
        deliver: called with each event; returns False when the subscriber cannot take
            it now (its own queue is full), in which case the event counts as lost.
    """

    id: int
    deliver: Callable[[Event], bool]
    lost: int = 0

    def offer(self, event: Event) -> None:
        if self.lost:
            if not self.deliver({"type": "events.lost", "count": self.lost}):
                self.lost += 1
                return
            self.lost = 0
        if not self.deliver(event):
            self.lost += 1


@attrs.define(repr=False)
class EventBus(Record):
    """Fan-out of events to subscribers, with a short history for late joiners."""

    history_size: int = 256
    _subs: dict[int, Subscription] = attrs.field(factory=dict)
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    history: deque[Event] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.history = deque(maxlen=self.history_size)

    def publish(self, type_: str, **fields: Any) -> Event:
        """Send an event of *type_* with *fields* to every subscriber."""
        event: Event = {"type": type_, "time": time.time(), **fields}
        self.history.append(event)
        for sub in list(self._subs.values()):
            sub.offer(event)
        return event

    def subscribe(self, deliver: Callable[[Event], bool]) -> Subscription:
        sub = Subscription(next(self._ids), deliver)
        self._subs[sub.id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.pop(sub.id, None)

    @property
    def subscribers(self) -> int:
        return len(self._subs)
