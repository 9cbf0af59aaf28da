"""Background jobs (block copy, pull, commit): ids, progress events, cancel.

A job is a trio task in the daemon's nursery. It reports progress as ``job.progress``
events on the event bus (``id``, ``kind``, ``guest``, ``done``, ``total``), and its end
as ``job.completed``, ``job.failed`` or ``job.cancelled``. ``job.cancel`` cancels the
task; the job's own code undoes what it had half done (a partial copy is removed).
Finished jobs stay listed for a while so that a client that looks late learns how
they ended.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from supervisor._record import Record
from supervisor.errors import JobNotFoundError, SupervisorError
from supervisor.events import EventBus
from supervisor.log import get_logger

log = get_logger(__name__)

#: How many finished jobs are remembered.
KEEP_FINISHED = 64
#: Progress events are sent at most this often per job (seconds), plus the last one.
PROGRESS_INTERVAL = 0.2


@attrs.define(eq=False, repr=False)
class Job(Record):
    id: int
    kind: str
    guest: str
    disk: str
    state: str = "running"
    done: int = 0
    total: int = 0
    error: str | None = None
    #: What done/total count: ``bytes`` for copies, ``steps`` for ZFS operations.
    unit: str = "bytes"
    result: dict[str, Any] = attrs.field(factory=dict)
    started: float = attrs.field(factory=time.time)
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    finished: trio.Event = attrs.field(factory=trio.Event)
    _bus: EventBus | None = None
    _last: float = 0.0

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "guest": self.guest,
            "disk": self.disk,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "error": self.error,
            "result": self.result,
        }

    def progress(self, done: int, total: int | None = None, *, force: bool = False) -> None:
        """Record progress; publish it unless one was published very recently."""
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if self._bus is not None and (force or now - self._last >= PROGRESS_INTERVAL):
            self._last = now
            self._bus.publish(
                "job.progress",
                id=self.id,
                kind=self.kind,
                guest=self.guest,
                done=self.done,
                total=self.total,
                unit=self.unit,
            )


JobBody = Callable[[Job], Awaitable[dict[str, Any] | None]]


class JobRegistry:
    """The daemon's jobs.

    Args:
        bus: where progress and end events go.
        spawn: starts a task in the daemon's nursery.
    """

    def __init__(self, bus: EventBus, spawn: Callable[[Callable[[], Awaitable[None]]], None]):
        self.bus = bus
        self.spawn = spawn
        self.jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)

    def active(self, guest: str, disk: str) -> Job | None:
        for job in self.jobs.values():
            if job.guest == guest and job.disk == disk and job.state == "running":
                return job
        return None

    def start(self, kind: str, guest: str, disk: str, body: JobBody, unit: str = "bytes") -> Job:
        """Start *body* as a job; returns at once."""
        job = Job(next(self._ids), kind, guest, disk, unit=unit, bus=self.bus)
        self.jobs[job.id] = job
        self._trim()

        async def run() -> None:
            try:
                with job.cancel_scope:
                    job.result = (await body(job)) or {}
                    job.state = "completed"
                if job.cancel_scope.cancelled_caught:
                    job.state = "cancelled"
            except SupervisorError as e:
                job.state, job.error = "failed", e.message
            except Exception as e:  # a job's failure must not reach the daemon's nursery
                log.exception("job_crashed", id=job.id, kind=kind)
                job.state, job.error = "failed", f"{type(e).__name__}: {e}"
            self.bus.publish(f"job.{job.state}", **job.info())
            job.finished.set()

        self.spawn(run)
        return job

    def get(self, job_id: int) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise JobNotFoundError(f"no job with id {job_id}", field="id") from None

    def cancel(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job.state == "running":
            job.cancel_scope.cancel()
        return job

    def _trim(self) -> None:
        done = [j for j in self.jobs.values() if j.state != "running"]
        for j in done[: max(0, len(done) - KEEP_FINISHED)]:
            del self.jobs[j.id]
