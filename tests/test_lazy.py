"""Modules loaded on first use: the daemon starts without what only its API methods need."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from supervisor._lazy import lazy_module


def _run(code: str, cwd: Path | None = None) -> str:
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
    )
    return r.stdout


def test_a_lazy_module_runs_at_its_first_attribute_and_is_the_imported_one(
    tmp_path: Path,
) -> None:
    pkg = tmp_path / "lazypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "heavy.py").write_text("print('heavy ran')\nVALUE = 42\n")
    out = _run(
        """
        import sys
        from supervisor._lazy import lazy_module
        mod = lazy_module("lazypkg.heavy")
        print("declared")
        print(mod.VALUE)
        import lazypkg.heavy
        from lazypkg import heavy
        print(lazypkg.heavy is mod, heavy is mod, lazy_module("lazypkg.heavy") is mod)
        """,
        cwd=tmp_path,
    )
    assert out.splitlines() == ["declared", "heavy ran", "42", "True True True"]


def test_a_missing_module_is_an_error_at_once() -> None:
    with pytest.raises(ModuleNotFoundError, match=r"supervisor\.no_such_module"):
        lazy_module("supervisor.no_such_module")


def test_the_daemon_and_its_methods_import_without_what_only_method_calls_use() -> None:
    out = _run(
        """
        import sys
        import supervisor.daemon, supervisor.api
        for name in sorted(sys.modules):
            module = sys.modules[name]
            if name.startswith("supervisor.") and type(module).__name__ == "_LazyModule":
                print(name)
        """
    )
    assert set(out.split()) >= {
        "supervisor.agent.client",
        "supervisor.hostcheck.checks",
        "supervisor.storage.disks",
        "supervisor.vmm.bhyvectl",
        "supervisor.vmm.psinfo",
    }
