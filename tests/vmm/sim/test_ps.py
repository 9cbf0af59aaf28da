"""The simulated ps: FreeBSD's columns and option rules, with Linux's real thread times."""

from __future__ import annotations

import ctypes
import io
import os
import threading
import time
from collections.abc import Iterator

import pytest

from supervisor.host import Host
from supervisor.vmm import psinfo
from supervisor.vmm.sim import ps
from tests.vmm.sim.conftest import run

BURN = 0.05


@pytest.fixture
def busy_thread() -> Iterator[int]:
    """A thread of this process named ``vcpu 7`` that used about BURN s of CPU, then idles."""
    ready = threading.Event()
    done = threading.Event()
    tid: list[int] = []

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(b"vcpu 7"), 0, 0, 0)  # PR_SET_NAME
        tid.append(threading.get_native_id())
        start = time.thread_time()
        while time.thread_time() - start < BURN:
            pass
        ready.set()
        done.wait()

    t = threading.Thread(target=body, daemon=True)
    t.start()
    ready.wait(10)
    try:
        yield tid[0]
    finally:
        done.set()
        t.join(10)


def _ps(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = ps.run(list(args), out, err)
    return status, out.getvalue(), err.getvalue()


def test_thread_times_parse_back(busy_thread: int) -> None:
    status, out, _ = _ps(*psinfo.threads_argv(os.getpid())[1:])
    assert status == 0
    threads = {t.tid: t for t in psinfo.parse_threads(out)}
    mine = threads[busy_thread]
    assert mine.name == "vcpu 7"
    assert psinfo.vcpu_number(mine.name) == 7
    assert BURN - 0.02 <= mine.cpu_time < BURN + 1.0
    status, out, _ = _ps(*psinfo.process_argv(os.getpid())[1:])
    usage = psinfo.parse_process(out)
    assert status == 0
    assert usage is not None
    assert usage.cpu_time >= mine.cpu_time
    assert usage.rss_kib > 1000


def test_headers_and_freebsd_list_rule() -> None:
    status, out, _ = _ps("-o", "pid,time", "-p", str(os.getpid()))
    assert status == 0
    header, row = out.splitlines()
    assert header.split() == ["PID", "TIME"]
    assert row.split()[0] == str(os.getpid())
    # An item with '=' ends the list: its header takes the rest, commas and all.
    status, out, _ = _ps("-o", "pid=,time=", "-p", str(os.getpid()))
    assert status == 0
    assert out.splitlines()[0].strip() == ",time="
    assert out.splitlines()[1].strip() == str(os.getpid())


def test_missing_pid_and_bad_options() -> None:
    assert _ps("-o", "pid=", "-p", "999999999") == (1, "", "")
    status, _, err = _ps("-Z")
    assert status == 1
    assert "usage: ps" in err
    status, _, err = _ps("-o", "bogus")
    assert status == 1
    assert "bogus: keyword not found" in err


def test_format_time_is_printtime() -> None:
    assert ps.format_time(0) == "0:00.00"
    assert ps.format_time(0.034) == "0:00.03"
    assert ps.format_time(59.996) == "1:00.00"
    assert ps.format_time(74096.78) == "1234:56.78"


def test_installed_ps_answers_the_supervisor_argv(sim: Host) -> None:
    r = run(sim, "ps", *psinfo.threads_argv(os.getpid())[1:])
    assert r.returncode == 0, r.stderr
    assert any(t.tid == threading.get_native_id() for t in psinfo.parse_threads(r.stdout))
