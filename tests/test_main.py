"""``python -m supervisor`` and the ``bhyvesupd`` command run the daemon."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

from supervisor import __version__

ROOT = Path(__file__).resolve().parent.parent


def _python_m_supervisor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_python_m_supervisor_is_bhyvesupd() -> None:
    out = _python_m_supervisor("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"bhyvesupd {__version__}"


def test_a_bad_option_is_refused_with_the_daemons_usage() -> None:
    out = _python_m_supervisor("--no-such-option")
    assert out.returncode == 2
    assert "usage: bhyvesupd" in out.stderr
    assert "--no-such-option" in out.stderr


def test_the_bhyvesupd_command_is_the_same_entry_point() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["bhyvesupd"].partition(":")
    entry = getattr(importlib.import_module(module), attr)
    from supervisor.__main__ import bhyvesupd

    assert entry is bhyvesupd
