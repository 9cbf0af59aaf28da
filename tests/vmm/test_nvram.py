"""The UEFI variable store is made from its template before the first boot, and kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.actors.guest import LaunchPlan
from supervisor.domain.xml import parse_domain_xml
from supervisor.errors import HostNotReadyError
from supervisor.host import Host
from supervisor.vmm.nvram import NvramHook

FW = "/usr/local/share/uefi-firmware"


def plan(nvram: str = "<nvram>/var/vm/g/VARS.fd</nvram>") -> LaunchPlan:
    d = parse_domain_xml(
        f"""<domain type='bhyve'><name>g</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
        <os><type>hvm</type><loader readonly='yes' type='pflash'>{FW}/BHYVE_UEFI.fd</loader>
        {nvram}</os><devices/></domain>"""
    )
    return LaunchPlan(loader=None, bhyve=("/usr/sbin/bhyve", "g"), domain=d)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    (tmp_path / FW.lstrip("/")).mkdir(parents=True)
    (tmp_path / FW.lstrip("/") / "BHYVE_UEFI_VARS.fd").write_bytes(b"VARS" * 1024)
    (tmp_path / FW.lstrip("/") / "OTHER_VARS.fd").write_bytes(b"other")
    return Host(str(tmp_path))


async def test_missing_store_is_copied_from_the_firmware_default(host: Host) -> None:
    await NvramHook(host, FW).before_launch("g", plan())
    made = Path(host.path("/var/vm/g/VARS.fd"))
    assert made.read_bytes() == b"VARS" * 1024
    assert made.stat().st_mode & 0o777 == 0o600


async def test_explicit_template_wins(host: Host) -> None:
    p = plan(f"<nvram template='{FW}/OTHER_VARS.fd'>/var/vm/g/VARS.fd</nvram>")
    await NvramHook(host, FW).before_launch("g", p)
    assert Path(host.path("/var/vm/g/VARS.fd")).read_bytes() == b"other"


async def test_an_existing_store_is_never_overwritten(host: Host) -> None:
    target = Path(host.path("/var/vm/g/VARS.fd"))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"the guest's boot entries")
    await NvramHook(host, FW).before_launch("g", plan())
    assert target.read_bytes() == b"the guest's boot entries"


async def test_missing_template_fails_the_launch_naming_the_field(host: Host) -> None:
    p = plan(f"<nvram template='{FW}/NOPE.fd'>/var/vm/g/VARS.fd</nvram>")
    with pytest.raises(HostNotReadyError, match=r"os\.nvram.*NOPE\.fd") as err:
        await NvramHook(host, FW).before_launch("g", p)
    assert err.value.field == "os.nvram"
    assert not Path(host.path("/var/vm/g/VARS.fd")).exists()


async def test_guest_without_nvram_is_left_alone(host: Host) -> None:
    await NvramHook(host, FW).before_launch("g", plan(nvram=""))
    assert not Path(host.path("/var/vm")).exists()
