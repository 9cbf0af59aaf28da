"""Fuzzing the bhyve argv parser: bhyve's options with random and near-miss values.

:func:`parse_bhyve_argv` must return a command, raise :class:`BhyveEarlyExit` (help,
lists, config dump), or raise :class:`BhyveCommandError` with bhyve's exit status and a
message; nothing else escapes. The domain converter on top of it (``domxml-from-native``)
must likewise succeed or raise a SupervisorError.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.errors import SupervisorError
from supervisor.vmm.bhyveopts import BhyveCommandError, BhyveEarlyExit, parse_bhyve_argv
from supervisor.vmm.native import domain_from_native

FLAGS = ["-A", "-a", "-C", "-D", "-e", "-H", "-P", "-S", "-u", "-W", "-w", "-x", "-Y", "-h"]
VALUED = ["-c", "-m", "-s", "-l", "-o", "-p", "-U", "-k", "-G", "-B", "-r", "-f", "-K"]

values = st.one_of(
    st.text(max_size=16),
    st.sampled_from(
        [
            "0",
            "1",
            "-1",
            "4",
            "64",
            "1G",
            "512M",
            "99999999999T",
            "2:0,virtio-blk,/d.img",
            "0:0,hostbridge",
            "31,lpc",
            "1:0,ahci,hd:/a.img,cd:/b.iso",
            "3,virtio-net,tap0",
            "4,nvme,ram=64",
            "5,passthru,2/0/0",
            "6,fbuf,tcp=0.0.0.0:5900,w=800,h=600",
            "com1,/dev/nmdm0A",
            "com1,stdio",
            "bootrom,/u.fd,/v.fd",
            "help",
            "config.dump=1",
            "cpus=2,sockets=1,cores=2,threads=1",
            "sockets=0",
            "vcpu.0.cpuset=0",
            "0:1",
            "1:0",
            "x=y",
            "pci.0.1.0.device=virtio-blk",
            "acpi_tables=true",
            ",,,",
            "=",
            "0:0:0,hostbridge",
            "256:0,hostbridge",
            "2:8,virtio-blk,/d",
        ]
    ),
)
argument = st.one_of(
    st.sampled_from(FLAGS).map(lambda f: [f]),
    st.tuples(st.sampled_from(VALUED), values).map(list),
    values.map(lambda v: [v]),
)
vmname = st.one_of(st.just("vm1"), st.text(max_size=40))


def _no_file(path: str) -> str:
    raise FileNotFoundError(path)


@settings(max_examples=400, deadline=None)
@given(st.lists(argument, max_size=10), vmname)
def test_any_argv_parses_or_fails_like_bhyve(args: list[list[str]], name: str) -> None:
    argv = ["bhyve", *[a for arg in args for a in arg], name]
    try:
        cmd = parse_bhyve_argv(argv, read_file=_no_file)
    except BhyveEarlyExit as exc:
        assert exc.exit_status in (0, 1)
        return
    except BhyveCommandError as exc:
        assert str(exc)
        assert exc.exit_status in (1, 4, 64, 71)
        assert exc.stderr
        return
    # bhyve takes any last argument as the name (the kernel judges it later); what it
    # built is a config tree of strings, as bhyve's nvlist is.
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in cmd.config.items())


@settings(max_examples=200, deadline=None)
@given(st.lists(argument, max_size=8), vmname)
def test_native_conversion_succeeds_or_raises_a_supervisor_error(
    args: list[list[str]], name: str
) -> None:
    text = " ".join(["bhyve", *[a.replace("\n", " ") for arg in args for a in arg], name])
    try:
        domain_from_native(text)
    except SupervisorError as exc:
        assert str(exc)
