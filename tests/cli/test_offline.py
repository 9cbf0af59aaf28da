"""bhyvesupctl's offline verbs, run as a user runs them: the installed console script."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.cli import offline
from supervisor.cli.main import VERB_GROUPS, build_parser
from supervisor.cli.shell import verbs_of
from supervisor.vmm.bhyveopts import parse_bhyve_argv

BHYVESUPCTL = Path(sys.executable).parent / "bhyvesupctl"

GUEST_ARGS = (
    "/usr/sbin/bhyveload -m 1G -d /vm/disk0.img web1\n"
    "/usr/sbin/bhyve -c 2 -m 1G -u -H -P -s 0:0,hostbridge -s 1,lpc "
    "-s 3,virtio-blk,/vm/disk0.img -s 4,virtio-net,tap7,mac=58:9c:fc:01:02:03 "
    "-l com1,/dev/nmdm-web1.1A web1\n"
)


def bhyvesupctl(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    if not BHYVESUPCTL.exists():
        pytest.fail(f"{BHYVESUPCTL} is missing: install the package (pip install -e .)")
    return subprocess.run(
        [str(BHYVESUPCTL), *args], input=stdin, capture_output=True, text=True, check=False
    )


def test_from_native_prints_domain_xml(tmp_path: Path) -> None:
    path = tmp_path / "web1.args"
    path.write_text(GUEST_ARGS)
    done = bhyvesupctl("domxml-from-native", "bhyve-argv", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("<domain type='bhyve'>\n  <name>web1</name>\n")
    assert "<source file='/vm/disk0.img'/>" in done.stdout
    assert "<target dev='tap7'/>" in done.stdout
    assert "<source master='/dev/nmdm-web1.1A' slave='/dev/nmdm-web1.1B'/>" in done.stdout


def test_from_native_reads_stdin_and_reports_warnings_on_stderr() -> None:
    done = bhyvesupctl(
        "domxml-from-native", "bhyve-argv", "-", stdin="bhyve -m 1G -x -s 3,uart,stdio vm0\n"
    )
    assert done.returncode == 0
    assert "<name>vm0</name>" in done.stdout
    warnings = done.stderr.splitlines()
    assert len(warnings) == 2
    assert all(line.startswith("bhyvesupctl: warning: ") for line in warnings)


def test_strict_turns_warnings_into_a_failure() -> None:
    done = bhyvesupctl(
        "domxml-from-native", "bhyve-argv", "--strict", "-", stdin="bhyve -m 1G -x vm0\n"
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "x86.x2apic" in done.stderr


def test_to_native_prints_shell_quoted_commands(tmp_path: Path) -> None:
    source = tmp_path / "web1.args"
    source.write_text(GUEST_ARGS)
    xml = bhyvesupctl("domxml-from-native", "bhyve-argv", str(source)).stdout
    (tmp_path / "web1.xml").write_text(xml)
    done = bhyvesupctl("domxml-to-native", "bhyve-argv", str(tmp_path / "web1.xml"))
    assert done.returncode == 0, done.stderr
    loader, bhyve = done.stdout.splitlines()
    assert shlex.split(loader) == [
        "/usr/sbin/bhyveload", "-m", "1024", "-d", "/vm/disk0.img", "web1",
    ]  # fmt: skip
    original = parse_bhyve_argv(shlex.split(GUEST_ARGS.splitlines()[1]))
    rebuilt = parse_bhyve_argv(shlex.split(bhyve))
    assert rebuilt.pci_devices() == original.pci_devices()
    assert rebuilt.com_ports() == original.com_ports()
    assert (rebuilt.memsize, rebuilt.cpus) == (original.memsize, original.cpus)


def test_to_native_output_reads_back_through_from_native(tmp_path: Path) -> None:
    (tmp_path / "g.xml").write_text(
        "<domain type='bhyve'><name>g</name><memory unit='MiB'>512</memory>"
        "<os><type>hvm</type></os><devices>"
        "<disk type='file' device='disk'><source file='/vm/my disk.img'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
    native = bhyvesupctl("domxml-to-native", "bhyve-argv", str(tmp_path / "g.xml"))
    assert native.returncode == 0, native.stderr
    assert "'/vm/my disk.img'" in native.stdout
    back = bhyvesupctl("domxml-from-native", "bhyve-argv", "-", stdin=native.stdout)
    assert back.returncode == 0, back.stderr
    assert "<source file='/vm/my disk.img'/>" in back.stdout


def test_to_native_needs_a_nic_tap_only_at_start(tmp_path: Path) -> None:
    (tmp_path / "n.xml").write_text(
        "<domain type='bhyve'><name>n</name><memory unit='MiB'>256</memory>"
        "<os><type>hvm</type><loader readonly='yes' type='pflash'>/fw/UEFI.fd</loader></os>"
        "<devices><interface type='bridge'><source bridge='bridge0'/>"
        "<mac address='58:9c:fc:00:00:09'/><model type='virtio'/></interface></devices></domain>"
    )
    done = bhyvesupctl("domxml-to-native", "bhyve-argv", str(tmp_path / "n.xml"))
    assert done.returncode == 0, done.stderr
    (bhyve,) = done.stdout.splitlines()
    assert "virtio-net,tap0,mac=58:9c:fc:00:00:09" in bhyve


@pytest.mark.parametrize(
    ("args", "stdin", "status", "needle"),
    [
        (("domxml-from-native", "bhyve-argv", "-"), "bhyve -s 3,virtio-gpu vm0\n", 1,
         'unknown device "virtio-gpu"'),
        (("domxml-from-native", "bhyve-argv", "-"), "bhyveload -m 1G vm0\n", 1,
         "no bhyve command"),
        (("domxml-from-native", "bhyve-argv", "/nonexistent/file"), "", 1,
         "No such file or directory"),
        (("domxml-to-native", "bhyve-argv", "-"), "<domain", 1, ""),
        (("domxml-to-native", "bhyve-argv", "-"),
         "<domain type='bhyve'><name>x</name><memory>0</memory><os><type>hvm</type></os>"
         "</domain>", 1, "memory"),
        (("domxml-from-native", "qemu-argv", "-"), "", 2, "invalid choice"),
        (("domxml-from-native",), "", 2, "required"),
        (("no-such-verb",), "", 2, "invalid choice"),
    ],
)  # fmt: skip
def test_errors_are_one_line_with_a_status(
    args: tuple[str, ...], stdin: str, status: int, needle: str
) -> None:
    done = bhyvesupctl(*args, stdin=stdin)
    assert done.returncode == status
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("bhyvesupctl")
    assert needle in done.stderr
    assert "Traceback" not in done.stderr


def test_every_group_contributes_its_verbs() -> None:
    verbs = verbs_of(build_parser())
    assert {"domxml-from-native", "domxml-to-native"} <= set(verbs)
    assert {"status", "start", "define"} <= set(verbs)
    assert {"domblkinfo", "blockcopy", "domfsfreeze"} <= set(verbs)
    assert {"import", "daemon-on-stop"} <= set(verbs)
    for group in VERB_GROUPS:
        parser = argparse.ArgumentParser()
        group.register(parser.add_subparsers())
        assert verbs_of(parser), f"{group.register.__module__} adds no verb"


def test_version() -> None:
    done = bhyvesupctl("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("bhyvesupctl ")


def test_formats_name_the_native_parser_format() -> None:
    from supervisor.vmm.native import FORMAT

    assert offline.FORMATS == (FORMAT,)


def test_the_cli_starts_without_the_daemon_side_modules() -> None:
    # Every bhyvesupctl command pays for what its start-up imports: the XML codec, the
    # argv parser, the dispatcher's structlog and trio are loaded only by the verbs that
    # need them.
    code = (
        "import sys, supervisor.cli.main\n"
        "heavy = ('lxml', 'structlog', 'trio', 'supervisor.domain.xml', "
        "'supervisor.vmm.bhyveopts', 'supervisor.rpc.dispatch')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
