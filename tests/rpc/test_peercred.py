from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from supervisor.rpc.peercred import PeerCredentials, decode_ucred, decode_xucred, peer_credentials
from supervisor.rpc.server import group_policy, serve_unix
from tests.conftest import require_real
from tests.rpc.test_server import Gate, make_registry

LP64_LITTLE = struct.calcsize("P") == 8 and sys.byteorder == "little"


# --------------------------------------------------------------------------- layouts


@pytest.mark.skipif(not LP64_LITTLE, reason="the golden buffer is FreeBSD/amd64's layout")
def test_freebsd_xucred_golden_amd64() -> None:
    # struct xucred on amd64: version @0, uid @4, ngroups @8 (short, 2 bytes padding),
    # groups[16] @12, union { void *; pid_t cr_pid; } @80; 88 bytes in all.
    raw = bytearray(88)
    struct.pack_into("<IIh", raw, 0, 0, 1001, 3)
    struct.pack_into("<16I", raw, 12, 1001, 0, 5, *([99] * 13))
    struct.pack_into("<i", raw, 80, 4242)
    assert decode_xucred(bytes(raw)) == PeerCredentials(
        uid=1001, gid=1001, groups=(1001, 0, 5), pid=4242
    )


def test_xucred_without_the_pid_union() -> None:
    # FreeBSD before 13 had no cr_pid; the head alone still gives uid and groups.
    head = struct.pack("@IIh16I", 0, 0, 1, 0, *([0] * 15))
    assert decode_xucred(head) == PeerCredentials(uid=0, gid=0, groups=(0,), pid=None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\0" * 10, "need at least"),
        (struct.pack("@IIh16IP", 1, 0, 1, *([0] * 16), 0), "unknown cr_version 1"),
        (struct.pack("@IIh16IP", 0, 0, 0, *([0] * 16), 0), "cr_ngroups must be 1..16, got 0"),
        (struct.pack("@IIh16IP", 0, 0, 17, *([0] * 16), 0), "got 17"),
    ],
)
def test_bad_xucred_buffers_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_xucred(raw)


def test_linux_ucred_with_and_without_groups() -> None:
    raw = struct.pack("@iII", 77, 1000, 100)
    assert decode_ucred(raw) == PeerCredentials(uid=1000, gid=100, groups=(100,), pid=77)
    groups = struct.pack("@3I", 100, 27, 4242)
    assert decode_ucred(raw, groups).groups == (100, 27, 4242)
    with pytest.raises(ValueError, match="ucred"):
        decode_ucred(b"\0\0")


def test_in_group_counts_the_effective_group() -> None:
    creds = PeerCredentials(uid=5, gid=20, groups=(30,))
    assert creds.in_group(20)
    assert creds.in_group(30)
    assert not creds.in_group(40)


# --------------------------------------------------------------------------- the real kernel


def test_peer_credentials_of_a_socketpair_are_our_own() -> None:
    require_real(sys.platform.startswith(("linux", "freebsd")), "Linux or FreeBSD kernel")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        creds = peer_credentials(a.fileno())
        assert creds.uid == os.geteuid()
        assert creds.gid == os.getegid()
        assert creds.pid == os.getpid()
        assert set(os.getgroups()) <= set(creds.groups) | {creds.gid}
        # Our descriptor is untouched.
        b.sendall(b"x")
        assert a.recv(1) == b"x"


def test_peer_credentials_of_a_non_socket_fail() -> None:
    with open(os.devnull, "rb") as f, pytest.raises(OSError):
        peer_credentials(f.fileno())


# The child imports everything while still root (the interpreter lives under /root),
# then becomes an unprivileged user and talks to the server.
CHILD = """
import json, os, sys
from supervisor.rpc.client import Client
from supervisor.errors import SupervisorError
path, uid, gid, groups = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.setgroups([int(g) for g in groups.split(",")])
os.setgid(gid)
os.setuid(uid)
out = {"pid": os.getpid()}
try:
    with Client(path, timeout=10) as client:
        out["who"] = client.call("test.whoami")
        try:
            out["set"] = client.call("test.set", value=1)
        except SupervisorError as exc:
            out["set"] = type(exc).__name__
except SupervisorError as exc:
    out["error"] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""

NOBODY = 65534


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    # tmp_path sits under a 0700 directory that an unprivileged child cannot cross.
    path = Path(tempfile.mkdtemp(prefix="bhyvesup-rpc-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


async def as_user(path: str, uid: int, gid: int, groups: list[int]) -> dict[str, Any]:
    result = await trio.run_process(
        [sys.executable, "-c", CHILD, path, str(uid), str(gid), ",".join(map(str, groups))],
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    data: dict[str, Any] = json.loads(result.stdout)
    return data


async def serve(nursery: trio.Nursery, path: Path, *, mode: int, **policy: Any) -> str:
    return await nursery.start(
        partial(
            serve_unix,
            str(path),
            make_registry(Gate()),
            authorize=group_policy(**policy),
            mode=mode,
        )
    )


@pytest.fixture
def as_root() -> None:
    require_real(os.geteuid() == 0, "root, to run a client under another uid")


@pytest.mark.usefixtures("as_root")
async def test_the_server_sees_the_real_uid_groups_and_pid_of_a_client(
    nursery: trio.Nursery, shared_dir: Path
) -> None:
    path = await serve(nursery, shared_dir / "bus.sock", mode=0o666, ro_groups=[4242])
    out = await as_user(path, NOBODY, NOBODY, [NOBODY, 4242])
    who = out["who"]
    assert (who["uid"], who["gid"], who["pid"]) == (NOBODY, NOBODY, out["pid"])
    assert 4242 in who["groups"]
    assert who["access"] == "ro"
    assert out["set"] == "PermissionDeniedError"


@pytest.mark.usefixtures("as_root")
async def test_a_member_of_the_rw_group_may_change_things(
    nursery: trio.Nursery, shared_dir: Path
) -> None:
    path = await serve(nursery, shared_dir / "bus.sock", mode=0o666, rw_groups=[4243])
    out = await as_user(path, NOBODY, NOBODY, [4243])
    assert out["who"]["access"] == "rw"
    assert out["set"] == 1


@pytest.mark.usefixtures("as_root")
async def test_a_stranger_is_refused_by_the_policy(nursery: trio.Nursery, shared_dir: Path) -> None:
    path = await serve(nursery, shared_dir / "bus.sock", mode=0o666, rw_groups=[4243])
    out = await as_user(path, NOBODY, NOBODY, [NOBODY])
    kind, message = out["error"]
    assert kind == "PermissionDeniedError"
    assert message == f"permission denied: uid {NOBODY} (gid {NOBODY}) may not use this socket"


@pytest.mark.usefixtures("as_root")
async def test_a_stranger_is_stopped_by_the_socket_mode_first(
    nursery: trio.Nursery, shared_dir: Path
) -> None:
    path = await serve(nursery, shared_dir / "bus.sock", mode=0o660)
    out = await as_user(path, NOBODY, NOBODY, [NOBODY])
    assert out["error"] == ["PermissionDeniedError", f"permission denied on {path}"]
