"""Mutable state of the simulated host's tools (interfaces, PCI drivers, pf rules).

Each tool keeps its state in one JSON document under ``ROOT/.simhost``. Several tools
run at once (two guests starting in parallel each run ``ifconfig``), so every change
happens under an exclusive ``flock`` of the document's lock file and is written back
atomically: a reader sees the state before or after a command, never half of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from supervisor.vmm.sim.hardware import SIM_DIR


def _path(root: str, name: str) -> str:
    return os.path.join(root, SIM_DIR, f"{name}.json")


@contextlib.contextmanager
def locked(root: str, name: str, default: Callable[[], Any]) -> Iterator[dict[str, Any]]:
    """The state document *name* of the host at *root*, saved when the block ends.

    *default* makes the document of a fresh host. An exception inside the block leaves
    the saved state untouched, as a failed command changes nothing.
    """
    path = _path(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, encoding="utf-8") as f:
                data: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            data = default()
        before = json.dumps(data)
        yield data
        after = json.dumps(data, indent=1)
        if json.dumps(data) != before or not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(after + "\n")
            os.replace(tmp, path)


def read(root: str, name: str, default: Callable[[], Any]) -> dict[str, Any]:
    """A snapshot of the state document *name* (for tests and read-only tools)."""
    with locked(root, name, default) as data:
        return json.loads(json.dumps(data))  # type: ignore[no-any-return]
