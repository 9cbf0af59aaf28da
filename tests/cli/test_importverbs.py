"""``bhyvesupctl import`` and ``daemon-on-stop``: offline, and against the real daemon."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from lxml import etree

from supervisor.cli.main import main
from tests.test_daemon_e2e import Sim, running_daemon

BHYVESUPCTL = str(Path(sys.executable).parent / "bhyvesupctl")


def vm_dir(tmp: Path) -> Path:
    """A vm-bhyve datastore with two guests and a switch."""
    root = tmp / "vm"
    (root / ".config").mkdir(parents=True)
    (root / ".config" / "system.conf").write_text('switch_list="public"\ntype_public="standard"\n')
    (root / ".templates").mkdir()
    (root / "web").mkdir()
    (root / "web" / "web.conf").write_text(
        'loader="bhyveload"\ncpu=1\nmemory=128M\n'
        'disk0_type="virtio-blk"\ndisk0_name="disk0.img"\n'
        'network0_type="virtio-net"\nnetwork0_switch="public"\n'
        'network0_mac="58:9c:fc:00:00:0a"\npriority="5"\n'
    )
    (root / "db").mkdir()
    (root / "db" / "db.conf").write_text(
        'loader="uefi"\ncpu=2\nmemory=256M\ndisk0_type="nvme"\ndisk0_name="disk0.img"\n'
    )
    (root / "notaguest").mkdir()
    return root


def documents(text: str) -> list[etree._Element]:
    parts = text.split("<domain ")[1:]
    return [etree.fromstring(("<domain " + p).encode()) for p in parts]


def test_import_vm_bhyve_prints_every_guest_and_reports_losses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = vm_dir(tmp_path)
    assert main(["import", "vm-bhyve", str(root)]) == 0
    out, err = capsys.readouterr()
    docs = documents(out)
    assert [d.findtext("name") for d in docs] == ["db", "web"]
    web = docs[1]
    assert web.find("devices/interface/source").get("bridge") == "vm-public"
    assert web.find("devices/disk/source").get("file") == f"{root}/web/disk0.img"
    assert err.splitlines() == [
        "bhyvesupctl: web: not carried over: priority=5 "
        "(bhyvesupd runs bhyve at its own priority; use rctl or nice outside it)"
    ]


def test_import_vm_bhyve_takes_names_or_one_guest_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = vm_dir(tmp_path)
    assert main(["import", "vm-bhyve", str(root), "web", "nosuch"]) == 3
    out, err = capsys.readouterr()
    assert [d.findtext("name") for d in documents(out)] == ["web"]
    assert "nosuch: no vm-bhyve guest here" in err
    assert main(["import", "vm-bhyve", str(root / "db")]) == 0
    out, _ = capsys.readouterr()
    assert [d.findtext("name") for d in documents(out)] == ["db"]


def test_a_guest_vm_bhyve_would_refuse_fails_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = vm_dir(tmp_path)
    (root / "db" / "db.conf").write_text("cpu=1\nmemory=1G\n")
    assert main(["import", "vm-bhyve", str(root)]) == 1
    out, err = capsys.readouterr()
    assert [d.findtext("name") for d in documents(out)] == ["web"]
    assert "bhyvesupctl: db: loader: vm-bhyve cannot start a guest without a loader" in err


def test_import_bhyve_argv_renames_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = tmp_path / "cmd"
    argv.write_text(
        "bhyve -c 1 -m 256M -A -H -P -s 0,hostbridge -s 3,virtio-blk,/d.img "
        "-s 4,virtio-net,tap0 -s 5,virtio-net,netgraph,path=x: -l com1,/dev/nmdm0A old\n"
    )
    assert main(["import", "bhyve-argv", str(argv), "--name", "new"]) == 0
    out, err = capsys.readouterr()
    (doc,) = documents(out)
    assert doc.findtext("name") == "new"
    assert "bhyvesupctl: new: not carried over: " in err
    assert main(["import", "bhyve-argv", str(argv), "--name=-bad"]) == 1
    _, err = capsys.readouterr()
    assert "--name:" in err


def test_import_without_a_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import"]) == 2
    assert "give a format" in capsys.readouterr().err


def ctl(sim: Sim, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BHYVESUPCTL, "-s", sim.socket, *args], capture_output=True, text=True, timeout=60
    )


def test_import_define_creates_the_guests_in_the_daemon(tmp_path: Path) -> None:
    root = vm_dir(tmp_path)
    with running_daemon(tmp_path, "--no-examples") as sim:
        r = ctl(sim, "import", "vm-bhyve", str(root), "--define")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [
            f"Domain 'db' defined from vm-bhyve {root}/db/db.conf",
            f"Domain 'web' defined from vm-bhyve {root}/web/web.conf",
        ]
        names = sorted(g["name"] for g in sim.call("domain.list"))
        assert names == ["db", "web"]
        xml = sim.call("domain.get_xml", name="web")["xml"]
        assert "58:9c:fc:00:00:0a" in xml


def bhyve_alive(sim: Sim, name: str) -> bool:
    pid = sim.root / "var/run/bhyvesupd" / f"{name}.pid"
    if not pid.exists():
        return False
    try:
        number = int(pid.read_text().split()[0])
        return (
            Path(f"/proc/{number}").exists()
            and "Z" not in Path(f"/proc/{number}/stat").read_text().split()[2]
        )
    except (OSError, ValueError, IndexError):
        return False


@pytest.mark.parametrize("on_stop", ["keep", "shutdown"])
def test_daemon_on_stop_decides_whether_sigterm_shuts_the_guests_down(
    tmp_path: Path, on_stop: str
) -> None:
    with running_daemon(tmp_path, "--no-examples", "--keep-guests") as sim:
        sim.define("g1")
        sim.define("g2")
        for name in ("g1", "g2"):
            sim.call("domain.start", name=name)
        for name in ("g1", "g2"):
            sim.wait_state(name, "running")
        r = ctl(sim, "daemon-on-stop", on_stop, "--budget", "20")
        assert r.returncode == 0, r.stderr
        expected = (
            "at its next stop the daemon shuts every guest down (within 20.0 s)"
            if on_stop == "shutdown"
            else "at its next stop the daemon leaves the guests running"
        )
        assert r.stdout.strip() == expected
        started = time.monotonic()
        sim.proc.terminate()
        sim.proc.wait(timeout=60)
        took = time.monotonic() - started
        alive = [bhyve_alive(sim, n) for n in ("g1", "g2")]
        if on_stop == "shutdown":
            assert alive == [False, False]
            assert took < 20
        else:
            assert alive == [True, True]


def test_daemon_on_stop_refuses_a_bad_budget(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "--no-examples") as sim:
        r = ctl(sim, "daemon-on-stop", "shutdown", "--budget", "-3")
        assert r.returncode == 2
        with sim.client() as c:
            from supervisor.errors import InvalidValueError

            with pytest.raises(InvalidValueError, match="budget: must be > 0"):
                c.call("daemon.set_on_stop", on_stop="shutdown", budget=0)
