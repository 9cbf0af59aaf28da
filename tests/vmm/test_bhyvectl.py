"""bhyvectl argv and output parsing, against the exact shapes FreeBSD prints."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import HostToolError, InvalidStateError, InvalidValueError, OutOfRangeError
from supervisor.host import Host
from supervisor.vmm import bhyvectl as ctl
from supervisor.vmm.bhyvectl import (
    MemMapEntry,
    MemSeg,
    Topology,
    VmIoctlError,
    VmNotFoundError,
)

# --------------------------------------------------------------------------- argv


def test_argv_builders() -> None:
    assert ctl.destroy_argv("web1") == ["bhyvectl", "--vm=web1", "--destroy"]
    assert ctl.create_argv("web1") == ["bhyvectl", "--vm=web1", "--create"]
    assert ctl.force_reset_argv("web1") == ["bhyvectl", "--vm=web1", "--force-reset"]
    assert ctl.force_poweroff_argv("web1") == ["bhyvectl", "--vm=web1", "--force-poweroff"]
    assert ctl.inject_nmi_argv("web1", 2) == ["bhyvectl", "--vm=web1", "--inject-nmi", "--cpu=2"]
    assert ctl.get_stats_argv("web1") == ["bhyvectl", "--vm=web1", "--get-stats", "--cpu=0"]
    assert ctl.cpus_argv("web1", "suspended") == ["bhyvectl", "--vm=web1", "--get-suspended-cpus"]
    assert ctl.rtc_argv("db") == ["bhyvectl", "--vm=db", "--get-rtc-time"]
    assert ctl.memmap_argv("db") == ["bhyvectl", "--vm=db", "--get-memmap"]
    assert ctl.memseg_argv("db") == ["bhyvectl", "--vm=db", "--get-memseg"]
    assert ctl.topology_argv("db") == ["bhyvectl", "--vm=db", "--get-cpu-topology"]


def test_argv_program_maps_through_the_host() -> None:
    argv = ctl.destroy_argv("web1")
    assert Host().tool(argv[0]) == "/usr/sbin/bhyvectl"
    assert Host(root="/sim").tool(argv[0]) == "/sim/usr/sbin/bhyvectl"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ctl.destroy_argv(""), "name: must not be empty"),
        (lambda: ctl.destroy_argv("a/b"), "name: not a valid device name"),
        (lambda: ctl.destroy_argv("x" * 230), "name: at most 229 characters, got 230"),
        (lambda: ctl.inject_nmi_argv("a", -1), "cpu: must be an integer >= 0, got -1"),
        (lambda: ctl.get_stats_argv("a", True), "cpu: must be an integer >= 0"),
        (lambda: ctl.cpus_argv("a", "idle"), "which: must be active, suspended or debug"),  # type: ignore[arg-type]
    ],
)
def test_argv_builders_refuse_bad_values(call: object, message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        call()  # type: ignore[operator]


# --------------------------------------------------------------------------- cpu sets


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("active cpus:\t 0, 1, 2, 3\n", {0, 1, 2, 3}),
        ("suspended cpus:\t (none)\n", set()),
        ("debug cpus:\t 1, 3\n", {1, 3}),
        ("active cpus:\t 0\n", {0}),
    ],
)
def test_parse_cpu_set(text: str, cpus: set[int]) -> None:
    assert ctl.parse_cpu_set(text) == cpus


@pytest.mark.parametrize("text", ["", "active cpus: 0, x\n", "vcpu0 stats:\n"])
def test_parse_cpu_set_refuses_other_text(text: str) -> None:
    with pytest.raises(HostToolError, match="cpu set: unexpected output"):
        ctl.parse_cpu_set(text)


# --------------------------------------------------------------------------- stats

STATS = (
    "vcpu0 stats:\n"
    "number of times in/out was intercepted  \t182733\n"
    "vcpu migration across host cpus         \t1042\n"
    "vm exits due to external interrupt      \t55102\n"
    "number of times hlt was intercepted     \t938211\n"
    "total number of vm exits                \t1300000\n"
    "vm exits due to nested page fault       \t7\n"
    "ipis sent to vcpu[0]                    \t0\n"
    "ipis sent to vcpu[1]                    \t12\n"
    "(null)                                  \t5\n"
    "(null)                                  \t6\n"
    "a statistic from a newer kernel         \t-3\n"
    "vcpu total runtime                      \t4129933772160\n"
    "Resident memory                         \t1073741824\n"
    "Wired memory                            \t0\n"
)


def test_parse_stats_splits_on_the_last_tab() -> None:
    vcpu, stats = ctl.parse_stats(STATS)
    assert vcpu == 0
    assert stats["number of times in/out was intercepted"] == 182733
    assert stats["vcpu total runtime"] == 4129933772160
    assert stats["Resident memory"] == 1073741824
    assert stats["ipis sent to vcpu[1]"] == 12
    # A repeated description loses nothing.
    assert (stats["(null)"], stats["(null) #2"]) == (5, 6)
    assert stats["a statistic from a newer kernel"] == -3
    assert len(stats) == 14


def test_cpu_stats_view_gives_stable_names_and_keeps_unknown_ones() -> None:
    view = ctl.cpu_stats_view(ctl.parse_stats(STATS)[1])
    assert view["vm_exits_total"] == 1300000
    assert view["hlt_exits"] == 938211
    assert view["io_exits"] == 182733
    assert view["nested_page_faults"] == 7
    assert view["vcpu_migrations"] == 1042
    assert view["external_interrupt_exits"] == 55102
    assert view["runtime_tsc"] == 4129933772160
    assert view["resident_bytes"] == 1073741824
    assert view["wired_bytes"] == 0
    assert view["ipis_sent[1]"] == 12
    assert view["a statistic from a newer kernel"] == -3
    assert view["(null) #2"] == 6


def test_parse_stats_of_another_vcpu() -> None:
    assert ctl.parse_stats("vcpu3 stats:\nvcpu total runtime                      \t9\n") == (
        3,
        {"vcpu total runtime": 9},
    )


def test_no_stats_means_no_such_vcpu() -> None:
    with pytest.raises(OutOfRangeError, match="no such vCPU") as info:
        ctl.parse_stats("")
    assert info.value.field == "cpu"


@pytest.mark.parametrize(
    "text", ["stats:\n", "vcpu0 stats:\nno tab here 5\n", "vcpu0 stats:\nx\tfive\n"]
)
def test_parse_stats_refuses_other_text(text: str) -> None:
    with pytest.raises(HostToolError, match="--get-stats"):
        ctl.parse_stats(text)


# --------------------------------------------------------------------------- rtc


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        # (The facts sheet's sample pairs this number with an illustrative time; bhyvectl
        # prints both from the same value, so they always agree.)
        ("rtc time 0x6650a1f3: Fri May 24 14:19:31 2024\n", 0x6650A1F3),
        ("rtc time 0: Thu Jan 01 00:00:00 1970\n", 0),
        ("rtc time 0x3c: Thu Jan 01 00:01:00 1970\n", 60),
    ],
)
def test_parse_rtc_time(text: str, seconds: int) -> None:
    assert ctl.parse_rtc_time(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "rtc time 0x6650a1f3: Fri May 24 14:19:32 2024\n",  # date one second off
        "rtc time 0x6650a1f3: Fri May 24 14:19:31 2024 extra\n",
        "rtc time 6650a1f3: Fri May 24 14:19:31 2024\n",
        "",
    ],
)
def test_parse_rtc_time_refuses_inconsistent_text(text: str) -> None:
    with pytest.raises(HostToolError, match="--get-rtc-time"):
        ctl.parse_rtc_time(text)


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2048MB", 2 << 30),
        ("16384kB", 16 << 20),
        ("65536B", 65536),
        ("256MB", 256 << 20),
        ("9216MB", 9 << 30),
        ("0B", 0),
        ("2048kB", 2 << 20),
    ],
)
def test_parse_humanized(text: str, size: int) -> None:
    assert ctl.parse_humanized(text) == size


@pytest.mark.parametrize("text", ["2048 MB", "16384KB", "2G", "-1B", "MB"])
def test_parse_humanized_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="humanized"):
        ctl.parse_humanized(text)


def _humanize(size: int) -> str:
    # What libutil's humanize_number(buf, 8, size, "B", HN_AUTOSCALE, HN_NOSPACE) prints
    # for sizes that are whole multiples of the unit it ends on.
    prefixes = ["", "k", "M", "G", "T", "P", "E"]
    i = 0
    while size >= 100000:
        size //= 1024
        i += 1
    return f"{size}{prefixes[i]}B"


@given(st.integers(0, 40).flatmap(lambda shift: st.integers(0, 99999).map(lambda n: n << shift)))
def test_humanized_sizes_of_whole_units_decode_exactly(size: int) -> None:
    text = _humanize(size)
    unit = 1 << (10 * "kMGTPE".find(text[-2]) + 10) if text[-2] in "kMGTPE" else 1
    if size % unit == 0:
        assert ctl.parse_humanized(text) == size


MEMMAP = (
    "Address     Length      Segment     Offset      Prot  Flags\n"
    "0           2048MB      sysmem      0           RWX   \n"
    "FFE00000    2048kB      bootrom     E00000      R-X   \n"
)

MEMMAP_BIG_WIRED = (
    "Address     Length      Segment     Offset      Prot  Flags\n"
    "0           3072MB      sysmem      0           RWX   \0wired\n"
    "100000000   5120MB      sysmem      C0000000    RWX   \0wired/iommu\n"
    "C0000000    16384kB     framebuffer 0           RW-   \n"
)


def test_parse_memmap_golden() -> None:
    assert ctl.parse_memmap(MEMMAP) == [
        MemMapEntry(gpa=0, length=2 << 30, segment="sysmem", offset=0, prot="RWX"),
        MemMapEntry(gpa=0xFFE00000, length=2 << 20, segment="bootrom", offset=0xE00000, prot="R-X"),
    ]


def test_parse_memmap_reads_flags_behind_the_nul_byte() -> None:
    low, high, fb = ctl.parse_memmap(MEMMAP_BIG_WIRED)
    assert low.flags == ("wired",)
    assert (high.gpa, high.length, high.offset, high.flags) == (
        4 << 30,
        5 << 30,
        3 << 30,
        ("wired", "iommu"),
    )
    assert high.end == 9 << 30
    assert (fb.segment, fb.prot, fb.writable, fb.flags) == ("framebuffer", "RW-", True, ())


def test_parse_memmap_of_a_vm_without_memory() -> None:
    assert ctl.parse_memmap("Address     Length      Segment     Offset      Prot  Flags\n") == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0  2048MB  sysmem  0  RWX\n",
        MEMMAP + "zz  1B  x  0  RWX\n",
        MEMMAP + "0 2G sysmem 0 RWX\n",
    ],
)
def test_parse_memmap_refuses_other_text(text: str) -> None:
    with pytest.raises(HostToolError, match="--get-memmap"):
        ctl.parse_memmap(text)


def test_parse_memseg_golden_14_and_15() -> None:
    fourteen = "ID  Length      Name\n0   2048MB      sysmem\n1   16384kB     bootrom\n"
    assert ctl.parse_memseg(fourteen) == [
        MemSeg(0, 2 << 30, "sysmem"),
        MemSeg(1, 16 << 20, "bootrom"),
    ]
    fifteen = (
        "ID  Length      Name\n0   9216MB      sysmem\n8   16384kB     bootrom\n"
        "9   16384kB     framebuffer\n"
    )
    assert [(s.id, s.name) for s in ctl.parse_memseg(fifteen)] == [
        (0, "sysmem"),
        (8, "bootrom"),
        (9, "framebuffer"),
    ]
    with pytest.raises(HostToolError, match="--get-memseg"):
        ctl.parse_memseg("0   2048MB      sysmem\n")


def test_parse_topology() -> None:
    text = "cpu_topology:\tsockets=1, cores=2, threads=2, maxcpus=16\n"
    assert ctl.parse_topology(text) == Topology(sockets=1, cores=2, threads=2, maxcpus=16)
    with pytest.raises(HostToolError, match="--get-cpu-topology"):
        ctl.parse_topology("cpu_topology:\tsockets=1\n")


# --------------------------------------------------------------------------- failures


def test_success_is_no_error() -> None:
    assert ctl.error_from_result(ctl.destroy_argv("web1"), 0, "", "") is None
    ctl.check_result(ctl.destroy_argv("web1"), 0, "", "")


def test_a_missing_vm_is_vm_not_found() -> None:
    argv = ctl.force_poweroff_argv("web1")
    stderr = "vm_open: web1 could not be opened: No such file or directory\n"
    exc = ctl.error_from_result(argv, 1, "", stderr)
    assert isinstance(exc, VmNotFoundError)
    assert isinstance(exc, InvalidStateError)
    assert str(exc) == "no VM named 'web1' in the kernel (--force-poweroff)"
    with pytest.raises(VmNotFoundError):
        ctl.check_result(argv, 1, "", stderr)


def test_other_open_failures_are_host_tool_errors() -> None:
    argv = ctl.get_stats_argv("web1")
    exc = ctl.error_from_result(
        argv, 1, "", "vm_open: web1 could not be opened: Permission denied\n"
    )
    assert type(exc) is HostToolError
    assert str(exc) == "bhyvectl --get-stats: cannot open VM 'web1': Permission denied"
    assert exc.to_data()["detail"] == {
        "argv": argv,
        "status": 1,
        "stderr": "vm_open: web1 could not be opened: Permission denied",
    }


def test_an_ioctl_error_on_stdout_carries_freebsd_errno() -> None:
    argv = ctl.force_reset_argv("web1")
    exc = ctl.error_from_result(argv, 255, "errno = 37\n", "")
    assert isinstance(exc, VmIoctlError)
    assert (exc.errno, exc.errno_name, exc.status) == (37, "EALREADY", 255)
    assert str(exc) == "bhyvectl --force-reset failed: EALREADY (errno 37)"
    other = ctl.error_from_result(argv, 255, "errno = 200\n", "")
    assert isinstance(other, VmIoctlError)
    assert other.errno_name == "errno 200"


def test_usage_errors_and_signals_are_host_tool_errors() -> None:
    usage = "bhyvectl: unrecognized option `--get-lowmem'\nUsage: bhyvectl --vm=<vmname>\n"
    exc = ctl.error_from_result(["bhyvectl", "--vm=a", "--get-lowmem"], 1, "", usage)
    assert type(exc) is HostToolError
    assert str(exc) == (
        "bhyvectl --get-lowmem failed (exit status 1): bhyvectl: unrecognized option `--get-lowmem'"
    )
    killed = ctl.error_from_result(ctl.destroy_argv("a"), -9, "", "")
    assert str(killed) == "bhyvectl --destroy failed (killed by signal 9): no message"


# --------------------------------------------------------------------------- the simulator agrees


@given(st.integers(0, 2**34))
def test_rtc_lines_of_the_simulated_bhyvectl_parse_back(seconds: int) -> None:
    from supervisor.vmm.sim.bhyvectl import format_rtc

    assert ctl.parse_rtc_time(format_rtc(seconds)) == seconds


@given(st.lists(st.integers(0, 255), unique=True, max_size=16))
def test_cpu_sets_of_the_simulated_bhyvectl_parse_back(cpus: list[int]) -> None:
    from supervisor.vmm.sim.bhyvectl import format_cpus

    assert ctl.parse_cpu_set(format_cpus("active cpus", cpus)) == set(cpus)


def test_every_statistic_the_simulator_prints_has_a_name() -> None:
    from supervisor.vmm.sim.bhyvectl import STATS, format_stats

    values = {desc: i for i, desc in enumerate(STATS)}
    vcpu, stats = ctl.parse_stats(format_stats(2, values))
    assert vcpu == 2
    assert stats == values
    view = ctl.cpu_stats_view(stats)
    assert all(name.isidentifier() and name.islower() for name in view), view


@given(
    st.integers(0, 30).flatmap(
        lambda shift: st.integers(1, 4096).map(lambda n: n << (10 * (shift % 4)))
    )
)
def test_sizes_of_the_simulated_bhyvectl_parse_back(size: int) -> None:
    from supervisor.vmm.sim.bhyvectl import humanize

    assert ctl.parse_humanized(humanize(size)) == size


# --------------------------------------------------------------------------- seed calls


def test_rtc_set_and_vcpu_sets_argv() -> None:
    assert ctl.set_rtc_argv("web1", 1700000000) == [
        "bhyvectl",
        "--vm=web1",
        "--set-rtc-time=1700000000",
        "--get-rtc-time",
    ]
    assert ctl.vcpu_sets_argv("web1") == [
        "bhyvectl",
        "--vm=web1",
        "--get-active-cpus",
        "--get-suspended-cpus",
    ]
    for bad in (-1, 1 << 63, True, "5"):
        with pytest.raises(InvalidValueError) as e:
            ctl.set_rtc_argv("web1", bad)  # type: ignore[arg-type]
        assert e.value.field == "seconds"


def test_cpu_sets_of_one_run() -> None:
    # `--get-active-cpus --get-suspended-cpus` of a 4-vCPU guest that is running, then
    # after a poweroff request (every vCPU suspended, both sets kept).
    running = "active cpus:\t 0, 1, 2, 3\nsuspended cpus:\t (none)\n"
    assert ctl.parse_cpu_sets(running) == {
        "active": frozenset({0, 1, 2, 3}),
        "suspended": frozenset(),
    }
    stopped = "active cpus:\t 0, 1, 2, 3\nsuspended cpus:\t 0, 1, 2, 3\ndebug cpus:\t 2\n"
    sets = ctl.parse_cpu_sets(stopped)
    assert sets["suspended"] == frozenset({0, 1, 2, 3})
    assert sets["debug"] == frozenset({2})
    assert ctl.parse_cpu_sets("") == {}
    with pytest.raises(HostToolError):
        ctl.parse_cpu_sets("active cpus:\t 0\nerrno = 22\n")


def test_rtc_after_set_golden() -> None:
    # What `--set-rtc-time=0x6650a1f3 --get-rtc-time` prints: only the getter's line (the
    # date is gmtime of the number; the facts example 14:05:39 does not match its number).
    assert ctl.parse_rtc_time("rtc time 0x6650a1f3: Fri May 24 14:19:31 2024\n") == 0x6650A1F3
    assert ctl.parse_rtc_time("rtc time 0: Thu Jan 01 00:00:00 1970\n") == 0
