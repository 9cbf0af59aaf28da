"""ps argv and output parsing: FreeBSD's per-thread and per-process CPU time shapes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import HostToolError, InvalidValueError
from supervisor.vmm import psinfo
from supervisor.vmm.sim.ps import format_time


def test_argv_has_one_o_per_keyword_so_no_header_swallows_the_rest() -> None:
    assert psinfo.threads_argv(4242) == [
        "ps", "-H",
        "-o", "lwp=", "-o", "time=", "-o", "usertime=", "-o", "systime=", "-o", "tdname=",
        "-p", "4242",
    ]  # fmt: skip
    assert psinfo.process_argv(7) == [
        "ps", "-o", "rss=", "-o", "time=", "-o", "usertime=", "-o", "systime=", "-p", "7",
    ]  # fmt: skip


@pytest.mark.parametrize("bad", [0, -1, True, "12"])
def test_argv_refuses_a_bad_pid(bad: object) -> None:
    with pytest.raises(InvalidValueError) as e:
        psinfo.threads_argv(bad)  # type: ignore[arg-type]
    assert e.value.field == "pid"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0:00.00", 0.0),
        ("0:00.03", 0.03),
        ("   0:01.50", 1.5),
        ("12:34.56", 754.56),
        ("1234:56.78", 74096.78),  # FreeBSD keeps counting minutes
        ("0:02,25", 2.25),  # the locale's decimal comma
        ("1:01:02.50", 3662.5),  # hours form of other releases
        ("2-01:00:00.00", 176400.0),  # days form
        ("0:07", 7.0),
    ],
)
def test_cputime_forms(text: str, seconds: float) -> None:
    assert psinfo.parse_cputime(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "1.5", "a:00.00", "1:61:00.00", "0:5.00", "-"])
def test_cputime_refuses_other_text(bad: str) -> None:
    with pytest.raises(ValueError, match="CPU time"):
        psinfo.parse_cputime(bad)


@given(st.integers(min_value=0, max_value=10**9))
def test_cputime_reads_what_freebsd_ps_prints(hundredths: int) -> None:
    assert psinfo.parse_cputime(format_time(hundredths / 100)) == pytest.approx(hundredths / 100)


# A 4-vCPU bhyve with one virtio-blk disk, as `ps -H -o lwp= ... -o tdname= -p PID` prints
# it on FreeBSD 14 (right-justified numbers and times, the name left as is).
THREADS = """\
100467   0:00.02   0:00.01   0:00.01 bhyve
100520   0:01.71   0:00.09   0:01.62 mevent
100521   0:00.00   0:00.00   0:00.00 blk-4:0-0
100522   0:00.00   0:00.00   0:00.00 blk-4:0-1
100529  83:07.37   2:11.80  80:55.57 vcpu 0
100530  81:44.02   1:58.13  79:45.89 vcpu 1
100531 1:01:02.50   0:00.10   0:00.20 vcpu 2
100532   0:00.00   0:00.00   0:00.00 vcpu 3
"""


def test_threads_golden() -> None:
    threads = psinfo.parse_threads(THREADS)
    assert [t.tid for t in threads][:2] == [100467, 100520]
    assert [t.name for t in threads] == [
        "bhyve", "mevent", "blk-4:0-0", "blk-4:0-1", "vcpu 0", "vcpu 1", "vcpu 2", "vcpu 3",
    ]  # fmt: skip
    vcpu0 = threads[4]
    assert (vcpu0.cpu_time, vcpu0.user_time, vcpu0.system_time) == pytest.approx(
        (4987.37, 131.80, 4855.57)
    )
    assert threads[6].cpu_time == pytest.approx(3662.5)
    by_vcpu = {psinfo.vcpu_number(t.name): t.tid for t in threads}
    assert by_vcpu[0] == 100529
    assert by_vcpu[3] == 100532
    assert psinfo.vcpu_number("mevent") is None
    assert psinfo.vcpu_number("vcpu 12") == 12
    assert psinfo.vcpu_number("vcpu x") is None


def test_threads_of_a_gone_process_are_empty() -> None:
    assert psinfo.parse_threads("") == []


def test_threads_refuse_other_text() -> None:
    with pytest.raises(HostToolError, match="unexpected output"):
        psinfo.parse_threads("  LWP     TIME USERTIME  SYSTIME TDNAME\n")
    with pytest.raises(HostToolError):
        psinfo.parse_threads("100529 lots 0:00.00 0:00.00 vcpu 0\n")


def test_process_golden() -> None:
    usage = psinfo.parse_process("2103456 165:02.11   4:11.70 160:50.41\n")
    assert usage is not None
    assert usage.rss_kib == 2103456
    assert (usage.cpu_time, usage.user_time, usage.system_time) == pytest.approx(
        (9902.11, 251.70, 9650.41)
    )
    assert psinfo.parse_process("") is None
    with pytest.raises(HostToolError):
        psinfo.parse_process("2103456 165:02.11\n")
    with pytest.raises(HostToolError):
        psinfo.parse_process("1 0:00.00 0:00.00 0:00.00\n2 0:00.00 0:00.00 0:00.00\n")
