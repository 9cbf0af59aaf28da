"""Who may use the daemon's socket, decided by real peer credentials of real uids.

The daemon runs as root with a read-write group and a read-only group; clients are
child processes switched to unprivileged uids (so the kernel, not the test, reports who
they are).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_real
from tests.test_daemon_e2e import Sim, spawn_daemon, stop_daemon

RW_GID, RO_GID, OTHER_GID = 46101, 46102, 46103
RW_UID, RO_UID, OTHER_UID = 46201, 46202, 46203

# The client: connect as the uid/groups given and try one read and one change.
# Everything is imported before the switch: the interpreter's own files may not be
# readable by the test uids.
CLIENT = """
import json, os, sys
from supervisor.rpc.client import Client
from supervisor.errors import SupervisorError
uid, gid = int(sys.argv[2]), int(sys.argv[3])
os.setgroups([gid]); os.setgid(gid); os.setuid(uid)
out = {}
for method, params in (("domain.list", {}), ("domain.start", {"name": "guarded"})):
    try:
        with Client(sys.argv[1], timeout=20) as c:
            r = c.call(method, **params)
        out[method] = "ok" if method == "domain.list" else r["state"]
    except SupervisorError as exc:
        out[method] = type(exc).__name__
    except OSError as exc:
        out[method] = type(exc).__name__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    tmp_path = tmp_path_factory.mktemp("access")
    require_real(os.geteuid() == 0, "root, to run clients as other uids")
    # A root that other uids can reach (pytest's own tmp dirs are 0700).
    base = Path(tempfile.mkdtemp(prefix="bhyvesup-access-"))
    base.chmod(0o755)
    root = base / "host"
    config = base / "bhyvesupd.toml"
    config.write_text(
        f'[daemon]\nsocket_mode = "0666"\nsocket_group = "{RW_GID}"\nreadonly_group = "{RO_GID}"\n'
    )
    s = spawn_daemon(root, tmp_path / "daemon.out", "--no-examples", "--config", str(config))
    try:
        for d in (root, root / "var", root / "var/run", root / "var/run/bhyvesupd"):
            d.chmod(0o755)
        s.define("guarded")
        yield s
    finally:
        stop_daemon(s)
        from supervisor.vmm.sim import teardown

        teardown(str(root))
        subprocess.run(["rm", "-rf", str(base)], check=False)


def as_user(sim: Sim, uid: int, gid: int) -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[1])
    r = subprocess.run(
        [sys.executable, "-c", CLIENT, sim.socket, str(uid), str(gid)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": repo},
        cwd="/",
    )
    assert r.returncode == 0, r.stderr
    result: dict[str, str] = json.loads(r.stdout)
    return result


def test_socket_carries_the_configured_group_and_mode(guarded: Sim) -> None:
    st = os.stat(guarded.socket)
    assert st.st_gid == RW_GID
    assert st.st_mode & 0o777 == 0o666


def test_a_non_member_is_refused(guarded: Sim) -> None:
    assert as_user(guarded, OTHER_UID, OTHER_GID) == {
        "domain.list": "PermissionDeniedError",
        "domain.start": "PermissionDeniedError",
    }
    assert guarded.info("guarded")["state"] == "shutoff"


def test_a_read_only_member_can_look_but_not_change(guarded: Sim) -> None:
    assert as_user(guarded, RO_UID, RO_GID) == {
        "domain.list": "ok",
        "domain.start": "PermissionDeniedError",
    }
    assert guarded.info("guarded")["state"] == "shutoff"


def test_a_read_write_member_can_start_a_guest(guarded: Sim) -> None:
    assert as_user(guarded, RW_UID, RW_GID) == {"domain.list": "ok", "domain.start": "running"}
