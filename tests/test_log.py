"""Daemon logging: JSON lines at the configured level and above."""

from __future__ import annotations

import datetime
import json
import logging
import re
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


def test_timestamps_are_utc_to_the_microsecond_and_in_order(
    tmp_path: Path, restore_logging: None
) -> None:
    path = tmp_path / "bhyvesupd.log"
    logsetup.configure(level="info", log_file=str(path), console=False)
    logger = logsetup.get_logger("bhyvesupd")
    before = datetime.datetime.now(datetime.UTC)
    for n in range(200):
        logger.info("guest_started", pid=n)
    after = datetime.datetime.now(datetime.UTC)
    stamps = [json.loads(line)["timestamp"] for line in path.read_text().splitlines()]
    assert len(stamps) == 200
    # One width for every line (ISO 8601 with microseconds, even when they are zero),
    # so a log sorted as text is sorted in time.
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", s) for s in stamps)
    times = [datetime.datetime.fromisoformat(s) for s in stamps]
    assert times == sorted(times)
    assert before - datetime.timedelta(microseconds=1) <= times[0]
    assert times[-1] <= after + datetime.timedelta(microseconds=1)


def test_a_log_file_that_cannot_be_written_is_reported_once_then_recovers(
    tmp_path: Path, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # /dev/full fails every write with ENOSPC, as a full /var/log does.
    path = tmp_path / "bhyvesupd.log"
    path.symlink_to("/dev/full")
    logsetup.configure(level="info", log_file=str(path), console=False)
    logger = logsetup.get_logger("bhyvesupd.guest")
    for n in range(20):
        logger.info("guest_started", pid=n)
    err = capsys.readouterr().err
    assert err == (
        f"bhyvesupd: log file {path}: No space left on device; "
        "records are lost until it can be written again\n"
    )
    # Space returns (here: the file is replaced, as newsyslog does): records are
    # written again, and stderr says so once.
    path.unlink()
    path.touch()
    logger.info("guest_started", pid=99)
    logger.info("guest_started", pid=100)
    assert capsys.readouterr().err == f"bhyvesupd: log file {path}: writable again\n"
    assert [json.loads(line)["pid"] for line in path.read_text().splitlines()] == [99, 100]


def test_stderr_that_is_no_terminal_gets_the_file_lines_of_warnings_and_worse(
    tmp_path: Path, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Under rc.d, daemon(8) -o writes stderr to bhyvesupd.out: what went wrong goes
    # there too, every event only to the log file.
    path = tmp_path / "bhyvesupd.log"
    logsetup.configure(level="info", log_file=str(path), console=True)
    logger = logsetup.get_logger("bhyvesupd.guest").bind(guest="web1")
    logger.info("guest_started", pid=42, boot=1)
    logger.warning("status_write_failed", error="No space left on device")
    logger.error("guest_actor_failed")
    err = capsys.readouterr().err
    lines = path.read_text().splitlines(keepends=True)
    assert [json.loads(line)["event"] for line in lines] == [
        "guest_started",
        "status_write_failed",
        "guest_actor_failed",
    ]
    assert err == "".join(lines[1:])  # the very lines of the file


def test_a_rotated_log_file_is_reopened(tmp_path: Path, restore_logging: None) -> None:
    path = tmp_path / "bhyvesupd.log"
    logsetup.configure(level="info", log_file=str(path), console=False)
    logger = logsetup.get_logger("bhyvesupd")
    logger.info("before_rotation")
    path.rename(tmp_path / "bhyvesupd.log.0")  # what newsyslog does
    logger.info("after_rotation")
    assert json.loads((tmp_path / "bhyvesupd.log.0").read_text())["event"] == "before_rotation"
    assert json.loads(path.read_text())["event"] == "after_rotation"


def test_exceptions_and_other_libraries_records_are_json_lines(
    tmp_path: Path, restore_logging: None
) -> None:
    path = tmp_path / "bhyvesupd.log"
    logsetup.configure(level="info", log_file=str(path), console=False)
    try:
        raise ValueError("bad value")
    except ValueError:
        logsetup.get_logger("bhyvesupd.guest").exception("guest_actor_failed", guest="web1")
    logging.getLogger("somelib").warning("disk %s is slow", "ada0")
    logging.getLogger("somelib").debug("not written")
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert (first["event"], first["level"], first["guest"]) == (
        "guest_actor_failed",
        "error",
        "web1",
    )
    assert "ValueError" in json.dumps(first["exception"])
    assert (second["event"], second["level"], second["logger"]) == (
        "disk ada0 is slow",
        "warning",
        "somelib",
    )


def test_without_a_log_file_stderr_gets_every_event_readable(
    tmp_path: Path, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logsetup.configure(level="info", log_file=None, console=True)
    logsetup.get_logger("bhyvesupd.guest").info("guest_started", guest="web1", pid=42)
    logsetup.get_logger("bhyvesupd").warn("dependency_missing", guest="db")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert "guest_started" in err[0]
    assert "guest=web1" in err[0]
    assert "pid=42" in err[0]
    assert "[warning" in err[1]
    assert "dependency_missing" in err[1]
