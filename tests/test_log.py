"""Daemon logging: JSON lines at the configured level and above."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import log as logsetup


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_events_below_the_level_are_dropped_and_the_rest_are_json(
    tmp_path: Path, restore_logging: None
) -> None:
    path = tmp_path / "bhyvesupd.log"
    logsetup.configure(level="info", log_file=str(path), console=False)
    logger = logsetup.get_logger("bhyvesupd.guest").bind(guest="web1")
    logger.debug("guest_event", trigger="Launched")
    logger.info("guest_started", pid=42, boot=1)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["event"], e["guest"], e["pid"], e["level"]) for e in lines] == [
        ("guest_started", "web1", 42, "info")
    ]
    assert lines[0]["timestamp"].endswith("Z")


def test_stderr_that_is_no_terminal_gets_the_file_lines(
    tmp_path: Path, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bhyvesupd.log"
    logsetup.configure(level="info", log_file=str(path), console=True)
    logger = logsetup.get_logger("bhyvesupd.guest").bind(guest="web1")
    logger.info("guest_started", pid=42, boot=1)
    logger.warning("status_write_failed", error="No space left on device")
    err = capsys.readouterr().err
    assert err == path.read_text()
    events = [json.loads(line) for line in err.splitlines()]
    assert [(e["event"], e["level"]) for e in events] == [
        ("guest_started", "info"),
        ("status_write_failed", "warning"),
    ]
