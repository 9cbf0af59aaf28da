"""docs/rpc.md's method reference is the method table's, and cannot drift from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.api.doc import BEGIN, DEFAULT_PAGE, END, main, method_table, render, update


def test_docs_rpc_md_is_up_to_date() -> None:
    assert main(["--check"]) == 0, "docs/rpc.md is stale: run python -m supervisor.api.doc"


def test_every_method_is_documented_with_its_access_and_parameters() -> None:
    registry = method_table()
    text = render(registry)
    for name in registry.names():
        method = registry.get(name)
        assert method is not None
        assert f"#### `{name}` ({method.access}" in text
    assert '| `on_stop` | `"keep" \\| "shutdown"` | required |' in text
    assert "| `budget` | `float \\| None` | `null` |" in text


def test_update_replaces_only_the_generated_part(tmp_path: Path) -> None:
    page = f"# Title\n\nprose\n\n{BEGIN}\nold\n{END}\n\nafter\n"
    new = update(page, f"{BEGIN}\nnew\n{END}\n")
    assert new == f"# Title\n\nprose\n\n{BEGIN}\nnew\n{END}\nafter\n"
    assert update("# Title\n", "REF\n") == "# Title\n\nREF\n"
    with pytest.raises(ValueError, match="END METHODS"):
        update(f"{BEGIN}\nno end\n", "x")


def test_check_fails_on_a_stale_page_and_writing_fixes_it(tmp_path: Path) -> None:
    page = tmp_path / "rpc.md"
    page.write_text(DEFAULT_PAGE.read_text().replace("#### `domain.start`", "#### `x`"))
    assert main([str(page), "--check"]) == 1
    assert main([str(page)]) == 0
    assert main([str(page), "--check"]) == 0
    assert page.read_text() == DEFAULT_PAGE.read_text()
