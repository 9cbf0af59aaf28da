"""End to end: the seed's calls through the real daemon and bhyvesupctl on the simulated host.

The simulated bhyve makes every answer observable for real: its vCPU threads are named
``vcpu N`` and use CPU time, its RTC runs with an offset, an NMI prints a line on the
guest console, and the guest writes its signature at a known guest-physical address.
The daemon runs with the host time zone three hours east of UTC, so a localtime RTC and
the guest's real time differ, as they do on a host outside UTC.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.errors import InvalidStateError, OutOfRangeError, UnsupportedError
from supervisor.vmm.guestmem import MAX_PEEK
from supervisor.vmm.sim.guest import SIGNATURE_GPA
from tests.test_daemon_e2e import Sim

#: POSIX TZ: three hours east of UTC, no daylight saving.
TZ = "XST-3"
TZ_OFFSET = 3 * 3600

GUEST = """<domain type='bhyve'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>2</vcpu>
  <cputune><vcpupin vcpu='1' cpuset='2-3'/></cputune>
  <os>
    <type>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/local/share/uefi-firmware/BHYVE_UEFI.fd</loader>
  </os>
  <clock offset='{clock}'/>
  <devices>
    <serial type='nmdm'>
      <source master='/dev/nmdm-{name}.1A' slave='/dev/nmdm-{name}.1B'/>
    </serial>
  </devices>
</domain>
"""


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    root = tmp_path / "host"
    log = open(tmp_path / "daemon.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.daemon", "--sim", str(root), "--no-examples"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TZ": TZ},
    )
    s = Sim(root, proc)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(s.socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "daemon did not start:\n" + (tmp_path / "daemon.out").read_text()
                )
            time.sleep(0.05)
        yield s
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        from supervisor.vmm.sim import teardown

        teardown(str(root))


def ctl(sim: Sim, *args: str) -> subprocess.CompletedProcess[str]:
    """Run bhyvesupctl against the daemon."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor.cli.main", "-s", sim.socket, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ctl_json(sim: Sim, *args: str) -> Any:
    r = ctl(sim, *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def boot(sim: Sim, name: str, clock: str) -> dict[str, Any]:
    sim.call("domain.define", xml=GUEST.format(name=name, clock=clock))
    info: dict[str, Any] = sim.call("domain.start", name=name)
    assert info["state"] == "running", info
    sim.wait_console(name, rf"{name}# ")
    return info


def test_seed_calls_on_a_running_guest(sim: Sim, tmp_path: Path) -> None:
    info = boot(sim, "web1", "localtime")

    # Host limits and CPU models: what bhyve can really give.
    models = ctl_json(sim, "cpu-models")
    assert models["models"] == ["Intel(R) Xeon(R) CPU E5-2650 v4 @ 2.20GHz"]
    assert models["mode"] == "host-passthrough"
    assert ctl(sim, "maxvcpus").stdout.strip() == "8"
    dom = ctl_json(sim, "maxvcpus", "web1")
    assert (dom["vcpus"], dom["max_vcpus"], dom["host_max_vcpus"]) == (2, 2, 8)
    assert ctl(sim, "maxmem", "web1").stdout.strip() == "131072 KiB"

    # vCPUs: both active, each thread named and timed, vCPU 1 pinned with -p.
    vcpus = ctl_json(sim, "vcpuinfo", "web1")
    assert [v["state"] for v in vcpus] == ["running", "running"]
    assert [v["affinity"] for v in vcpus] == [None, [2, 3]]
    for v in vcpus:
        assert v["cpu_time"] >= 0.01, v  # the simulated vCPU spent 10 ms booting
        tid = v["thread_id"]
        comm = Path(f"/proc/{info['pid']}/task/{tid}/comm").read_text().strip()
        assert comm == f"vcpu {v['vcpu']}"
    text = ctl(sim, "vcpuinfo", "web1").stdout
    assert "CPU Affinity: 2,3" in text

    # Work inside the guest shows on that vCPU's thread, and only there.
    sim.type("web1", "spin 1 0.3")
    sim.wait_console("web1", r"vcpu 1 busy for 0.3 s")
    sim.wait_for(
        "vcpu 1 to spin",
        lambda: (
            sim.call("domain.get_vcpus", name="web1")[1]["cpu_time"] >= vcpus[1]["cpu_time"] + 0.28
        ),
    )
    after = sim.call("domain.get_vcpus", name="web1")
    assert after[0]["cpu_time"] < vcpus[0]["cpu_time"] + 0.1

    # CPU stats: process total >= the vCPUs', and the VM-exit counters by name.
    stats = ctl_json(sim, "cpu-stats", "web1")
    assert stats["pid"] == info["pid"]
    total = stats["total"]["cpu_time"]
    assert total >= sum(v["cpu_time"] for v in stats["vcpus"])
    assert [v["vcpu"] for v in stats["vcpus"]] == [0, 1]
    assert stats["vcpus"][1]["io_exits"] == 401
    assert stats["vcpus"][0]["resident_bytes"] > 0
    assert "vm_exits_total" in ctl(sim, "cpu-stats", "web1", "--vcpu", "1").stdout

    # NMI: the guest prints it on its console, and the kernel counts it.
    assert ctl(sim, "inject-nmi", "web1", "--vcpu", "1").stdout.strip() == (
        "web1: NMI sent to vcpu 1"
    )
    sim.wait_console("web1", r"NMI received on vcpu 1")
    one = ctl_json(sim, "cpu-stats", "web1", "--vcpu", "1")
    assert one["vcpus"][0]["nmis_delivered"] == 1

    # Time: a localtime RTC holds local wall time; the guest's time is real UTC.
    now = time.time()
    t = ctl_json(sim, "domtime", "web1")
    assert t["clock"] == "localtime"
    assert abs(t["seconds"] - now) < 5
    assert abs(t["rtc"] - (now + TZ_OFFSET)) < 5
    t = ctl_json(sim, "domtime", "web1", "--set", "1700000000")
    assert (t["seconds"], t["rtc"]) == (1700000000, 1700000000 + TZ_OFFSET)
    later = sim.call("domain.get_time", name="web1")
    assert 1700000000 <= later["seconds"] <= 1700000005

    # Memory: the signature at its address, through the CLI in 1 MiB chunks.
    out = tmp_path / "peek.bin"
    r = ctl(sim, "memory-peek", "web1", "--start", "0", "--size", "2M", "-o", str(out))
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert len(data) == 2 << 20
    assert data[SIGNATURE_GPA : SIGNATURE_GPA + 15] == b"BHYVESIM:web1:1"
    peek = sim.call("domain.memory_peek", name="web1", start=SIGNATURE_GPA, size=15)
    assert base64.b64decode(peek["data"]) == b"BHYVESIM:web1:1"
    mem = ctl_json(sim, "dommemstat", "web1")
    assert mem["actual"] == 131072
    assert mem["rss"] > 0
    assert "wired" not in mem  # not a -S guest


def test_errors_name_the_field(sim: Sim, tmp_path: Path) -> None:
    sim.call("domain.define", xml=GUEST.format(name="off", clock="utc"))
    with pytest.raises(InvalidStateError, match="not running") as e:
        sim.call("domain.get_vcpus", name="off")
    assert e.value.field == "name"
    r = ctl(sim, "memory-peek", "off", "--start", "0", "--size", "16", "-o", str(tmp_path / "x"))
    assert r.returncode == 1
    assert "not running" in r.stderr
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "x.part").exists()

    boot(sim, "on", "utc")
    # A guest that never starts its second vCPU (the AP stays in 15.x's debug set).
    xml = GUEST.format(name="uni", clock="utc").replace(
        "</devices>\n</domain>",
        "</devices>\n  <bhyve:commandline xmlns:bhyve='http://libvirt.org/schemas/domain/bhyve/1.0'>"
        "<bhyve:arg value='-o'/><bhyve:arg value='bhyvesim.acpi_delay=never'/>"
        "</bhyve:commandline>\n</domain>",
    )
    sim.call("domain.define", xml=xml)
    sim.call("domain.start", name="uni")
    sim.wait_console("uni", r"uni# ")
    assert [v["state"] for v in sim.call("domain.get_vcpus", name="uni")] == [
        "running",
        "offline",
    ]
    ram = 128 << 20
    with pytest.raises(OutOfRangeError) as e:
        sim.call("domain.memory_peek", name="on", start=ram, size=16)
    assert e.value.field == "start"
    with pytest.raises(OutOfRangeError) as e:
        sim.call("domain.memory_peek", name="on", start=ram - 8, size=16)
    assert e.value.field == "size"
    with pytest.raises(OutOfRangeError) as e:
        sim.call("domain.memory_peek", name="on", start=0, size=MAX_PEEK + 1)
    assert e.value.field == "size"
    with pytest.raises(OutOfRangeError) as e:
        sim.call("domain.inject_nmi", name="on", vcpu=2)
    assert e.value.field == "vcpu"
    with pytest.raises(UnsupportedError) as e:
        sim.call("connect.get_cpu_model_names", arch="aarch64")
    assert e.value.field == "arch"
    r = ctl(sim, "memory-peek", "on", "--start", hex(ram - 8), "--size", "16", "-o", "-")
    assert r.returncode == 1
    assert "size:" in r.stderr
    # The guest is untouched by all that.
    assert sim.info("on")["state"] == "running"
    t = sim.call("domain.get_time", name="on")
    assert t["seconds"] == t["rtc"]
