"""Fixtures for the simulated host: an installed root that is always torn down."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.host import Host
from supervisor.vmm.sim import install, teardown


@pytest.fixture
def sim_root(tmp_path: Path) -> Iterator[str]:
    """A directory for a simulated host; every process it started is killed afterwards."""
    root = str(tmp_path / "host")
    try:
        yield root
    finally:
        teardown(root)


@pytest.fixture
def sim(sim_root: str) -> Host:
    """A default simulated FreeBSD 15.0 Intel host."""
    return install(sim_root)


def run(host: Host, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a simulated host tool the way the supervisor does: its path, then argv."""
    return subprocess.run(
        [host.tool(tool), *args], capture_output=True, text=True, timeout=30, check=False
    )
