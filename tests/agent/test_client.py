"""The trio guest agent client against the real qemu-ga and against the simulated agent.

qemu-ga runs as a child listening on a Unix socket in a temporary directory, with every
command but the harmless ones blocked (``-b``): the test machine's filesystems are
never frozen, its clock never set, nothing shut down.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from supervisor.agent import client as client_mod
from supervisor.agent.client import AgentClient
from supervisor.errors import GuestAgentError
from supervisor.vmm.sim.agent import Agent
from tests.conftest import require_real

SAFE = {
    "guest-sync-delimited",
    "guest-sync",
    "guest-ping",
    "guest-info",
    "guest-get-time",
    "guest-fsfreeze-status",
}


@pytest.fixture
def qemu_ga(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("qemu-ga")
    require_real(binary is not None, "qemu-ga (Debian package qemu-guest-agent)")
    assert binary is not None
    every = subprocess.run(
        [binary, "-b", "help"], capture_output=True, text=True, check=False
    ).stdout.split()
    assert "guest-fsfreeze-freeze" in every
    blocked = ",".join(c for c in every if c not in SAFE)
    sock = str(tmp_path / "qga.sock")
    proc = subprocess.Popen(
        [
            binary,
            "-m",
            "unix-listen",
            "-p",
            sock,
            "-f",
            str(tmp_path / "qga.pid"),
            "-t",
            str(tmp_path),
            "-b",
            blocked,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "qemu-ga did not create its socket"
            time.sleep(0.02)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


async def test_real_qemu_ga_ping_info_time_and_freeze_status(qemu_ga: str) -> None:
    ga = AgentClient(qemu_ga, "qga")
    await ga.ping()
    info = await ga.info()
    assert info.version.startswith(("7.", "8.", "9.", "10."))
    assert set(info.commands) == SAFE
    before = time.time_ns()
    t = await ga.get_time()
    assert before - 5 * 10**9 < t < time.time_ns() + 5 * 10**9
    assert await ga.fsfreeze_status() == "thawed"


async def test_real_qemu_ga_refusal_is_a_guest_agent_error(qemu_ga: str) -> None:
    # The command is blocked in the fixture: this asks, and nothing is frozen.
    with pytest.raises(GuestAgentError, match=r"guest-fsfreeze-freeze.*disabled"):
        await AgentClient(qemu_ga, "qga").fsfreeze_freeze()


async def test_a_reply_left_by_an_earlier_client_is_not_taken_for_ours(qemu_ga: str) -> None:
    # An earlier client sent a command and left before reading its answer.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(qemu_ga)
        s.sendall(b'{"execute": "guest-info"}\n')
    assert await AgentClient(qemu_ga, "qga").fsfreeze_status() == "thawed"


async def test_an_agent_that_never_answers_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_mod, "SYNC_TIMEOUT", 0.3)
    path = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(1)  # bhyve listens even when no agent runs in the guest
        with pytest.raises(GuestAgentError, match=r"did not answer within 0\.3 s"):
            await AgentClient(path, "web1").ping()


async def test_no_socket_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(GuestAgentError, match=r"web1: guest agent socket .*missing\.sock"):
        await AgentClient(str(tmp_path / "missing.sock"), "web1").ping()


async def test_client_against_the_simulated_agent(tmp_path: Path) -> None:
    agent = Agent()
    path = str(tmp_path / "sim.sock")
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(path)
    listener.listen(1)

    async def serve() -> None:
        while True:
            conn, _ = await listener.accept()
            with conn:
                agent.reset_stream()
                while data := await conn.recv(65536):
                    if out := agent.receive(data, time.time_ns()):
                        await conn.send(out)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        ga = AgentClient(path, "sim")
        assert await ga.fsfreeze_freeze() == 1
        assert await ga.fsfreeze_status() == "frozen"
        with pytest.raises(GuestAgentError, match="guest-get-time has been disabled"):
            await ga.get_time()
        assert await ga.fsfreeze_thaw() == 1
        await ga.set_time(time.time_ns() + 3600 * 10**9)
        assert await ga.get_time() - time.time_ns() > 3500 * 10**9
        await ga.shutdown("halt")
        await trio.sleep(0.05)
        assert agent.shutdown == "halt"
        nursery.cancel_scope.cancel()
    listener.close()
