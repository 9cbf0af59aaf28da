"""bhyvesupctl's host and network verbs: tables, including empty ones, and the local
host-validate exit statuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from supervisor.cli.hostnet import _table
from supervisor.vmm.sim import install


def test_tables_with_and_without_rows() -> None:
    assert _table(("MAC address", "IP address"), []) == "MAC address IP address\n" + "-" * 22
    text = _table(("Name", "Address"), [("tap0", "10.10.0.2/24"), ("tap1", None)])
    assert text.splitlines() == [
        "Name Address",
        "-----------------",
        "tap0 10.10.0.2/24",
        "tap1 -",
    ]


def test_host_validate_on_a_simulated_host_needs_no_daemon(tmp_path: Path) -> None:
    root = tmp_path / "h"
    install(str(root), vmm_loaded=False)
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.cli.main", "host-validate", "--sim", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert (
        " BHYVE: Checking if module vmm is loaded                                     : FAIL "
        '(not loaded; kldload vmm, and vmm_load="YES" in /boot/loader.conf)'
    ) in done.stdout.splitlines()
