"""Long-lived children: spawned in a session of their own, waited for without a thread."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import trio

from supervisor.vmm.platform import children

SH = "/bin/sh"


def _out(tmp_path: Path) -> int:
    return os.open(tmp_path / "out.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def _spawn(tmp_path: Path, script: str, env: dict[str, str] | None = None) -> int:
    fd = _out(tmp_path)
    try:
        return children.spawn_detached(
            [SH, "-c", script], env=env if env is not None else dict(os.environ), output_fd=fd
        )
    finally:
        os.close(fd)


async def test_exit_code_output_and_environment(tmp_path: Path) -> None:
    pid = _spawn(tmp_path, 'echo "out $GREETING"; echo err >&2; exit 3', {"GREETING": "hi"})
    assert await children.wait_child(pid) == 3
    assert (tmp_path / "out.log").read_text() == "out hi\nerr\n"


async def test_stdin_is_dev_null(tmp_path: Path) -> None:
    pid = _spawn(tmp_path, "cat; echo end")
    # cat would block forever on an inherited terminal or pipe.
    with trio.fail_after(10):
        assert await children.wait_child(pid) == 0
    assert (tmp_path / "out.log").read_text() == "end\n"


async def test_own_session_and_default_sigpipe(tmp_path: Path) -> None:
    # A session of its own: the daemon's process group (a terminal's ^C) never reaches it.
    # SIGPIPE back at its default (Python ignores it): a write to a closed pipe kills it.
    pid = _spawn(
        tmp_path,
        "ps -o sid= -o pgid= -p $$; grep SigIgn /proc/$$/status; sleep 0.2",
    )
    assert await children.wait_child(pid) == 0
    sid, pgid, *rest = (tmp_path / "out.log").read_text().split()
    assert int(sid) == pid
    assert int(pgid) == pid
    assert int(rest[-1], 16) & (1 << (signal.SIGPIPE - 1)) == 0


async def test_killed_by_signal_is_negative(tmp_path: Path) -> None:
    pid = _spawn(tmp_path, "sleep 30")
    os.kill(pid, signal.SIGKILL)
    assert await children.wait_child(pid) == -signal.SIGKILL


async def test_already_ended_child_is_reaped(tmp_path: Path) -> None:
    pid = _spawn(tmp_path, "exit 7")
    await trio.sleep(0.3)  # a zombie by now
    assert await children.wait_child(pid) == 7
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: no zombie left


async def test_cancelled_wait_leaves_the_child_running(tmp_path: Path) -> None:
    pid = _spawn(tmp_path, "sleep 30")
    with trio.move_on_after(0.2):
        await children.wait_child(pid)
    os.kill(pid, 0)  # still there
    os.kill(pid, signal.SIGTERM)
    assert await children.wait_child(pid) == -signal.SIGTERM


async def test_no_worker_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_threads(self: threading.Thread) -> None:
        raise AssertionError("a thread was started")

    async def no_worker(*args: object, **kw: object) -> None:
        raise AssertionError("a worker thread was used")

    monkeypatch.setattr(threading.Thread, "start", no_threads)
    monkeypatch.setattr(trio.to_thread, "run_sync", no_worker)
    pids = [_spawn(tmp_path, "exit 0") for _ in range(20)]
    for pid in pids:
        assert await children.wait_child(pid) == 0


async def test_missing_program_is_an_oserror(tmp_path: Path) -> None:
    fd = _out(tmp_path)
    try:
        with pytest.raises(FileNotFoundError):
            children.spawn_detached([str(tmp_path / "nope")], env={}, output_fd=fd)
    finally:
        os.close(fd)


async def test_without_setsid_a_process_group_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.posix_spawn

    def no_setsid(*args: object, **kw: object) -> int:
        if kw.get("setsid"):
            raise NotImplementedError("setsid is not supported")
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "posix_spawn", no_setsid)
    monkeypatch.setattr(children, "_setsid_supported", True)
    pid = _spawn(tmp_path, "ps -o sid= -o pgid= -p $$")
    assert await children.wait_child(pid) == 0
    sid, pgid = (int(x) for x in (tmp_path / "out.log").read_text().split())
    assert pgid == pid
    assert sid == os.getsid(0)


async def test_run_to_end_returns_status(tmp_path: Path) -> None:
    fd = _out(tmp_path)
    try:
        assert await children.run_to_end([SH, "-c", "exit 2"], env={}, output_fd=fd) == 2
    finally:
        os.close(fd)


async def test_cancelled_run_to_end_stops_and_reaps_the_program(tmp_path: Path) -> None:
    fd = _out(tmp_path)
    script = f"echo $$ > {tmp_path}/pid; exec sleep 30"
    try:
        with trio.move_on_after(0.5):
            await children.run_to_end([SH, "-c", script], env={}, output_fd=fd)
    finally:
        os.close(fd)
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, and reaped (no zombie left to signal)


async def test_cancelled_run_to_end_kills_a_program_that_ignores_sigterm(
    tmp_path: Path,
) -> None:
    fd = _out(tmp_path)
    script = f"trap '' TERM; echo $$ > {tmp_path}/pid; while :; do sleep 0.05; done"
    try:
        with trio.move_on_after(0.5):
            await children.run_to_end([SH, "-c", script], env={}, output_fd=fd, kill_after=0.3)
    finally:
        os.close(fd)
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
