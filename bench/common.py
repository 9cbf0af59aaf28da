"""Shared parts of the benchmarks: a simulated host with N guests, process accounting,
the supervisord peer, and the ``name: value unit`` report format.

Every figure is taken from /proc (utime+stime of one process, VmRSS), so the daemon's
own cost is separated from its children's: neither supervisor is charged for the
simulated bhyve processes it runs, only for supervising them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from supervisor.rpc.client import Client  # noqa: E402

NS = "urn:bhyve-supervisor:domain:1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SUPERVISORD = "/usr/bin/supervisord"
SUPERVISORCTL = "/usr/bin/supervisorctl"


# -- reporting ---------------------------------------------------------------------------


def report(
    name: str,
    value: float | None,
    unit: str,
    *,
    peer: float | None = None,
    peer_name: str = "",
    target: str = "",
    lower_is_better: bool = True,
) -> dict[str, Any]:
    """Print one figure as ``name: value unit``, with the peer's figure and the ratio."""
    if value is None:
        print(f"{name}: unavailable", flush=True)
        return {"name": name, "value": None}
    line = f"{name}: {_fmt(value)} {unit}"
    ratio = None
    if peer is not None:
        line += f"  ({peer_name or 'peer'}: {_fmt(peer)} {unit}"
        if peer > 0:
            ratio = value / peer
            line += f", ratio {ratio:.3f}"
        line += ")"
    if target:
        line += f"  [target {target}]"
    print(line, flush=True)
    return {"name": name, "value": value, "unit": unit, "peer": peer, "ratio": ratio}


def _fmt(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.4f}"


def percentile(values: list[float], p: float) -> float:
    """The *p*-th percentile (nearest rank) of *values*."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- /proc accounting --------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """The process's own user+system CPU time (children not included)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (the interpreter, libraries) split fairly."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss_bytes(pid)


def children_of(pid: int) -> list[int]:
    """Direct children of *pid*."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def wait_for(what: str, check: Callable[[], bool], timeout: float, poll: float = 0.05) -> float:
    """Wait until *check()*; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll)


def wait_booted(pids: list[int], names: list[str], timeout: float = 600.0) -> None:
    """Wait until every simulated bhyve has finished start-up (it titles itself
    ``bhyve: NAME`` last), then for the guests' banners and ACPI: idle means idle."""

    def titled(pid: int, name: str) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().rstrip(b"\0") == f"bhyve: {name}".encode()
        except OSError:
            return False

    wait_for("every bhyve started up", lambda: all(map(titled, pids, names)), timeout, 0.5)
    time.sleep(1.0)


# -- the simulated host and bhyvesupd ----------------------------------------------------


def guest_xml(
    name: str, *, autostart: bool = True, light: bool = True, console: bool = True
) -> str:
    """A UEFI guest (no loader process), one vCPU, one disk, com1 on nmdm."""
    cmdline = ""
    if light:
        cmdline = (
            "<bhyve:commandline xmlns:bhyve='http://libvirt.org/schemas/domain/bhyve/1.0'>"
            "<bhyve:arg value='-o'/><bhyve:arg value='bhyvesim.light=1'/>"
            "</bhyve:commandline>"
        )
    serial = (
        f"<serial type='nmdm'><source master='/dev/nmdm-{name}.1A' "
        f"slave='/dev/nmdm-{name}.1B'/></serial>"
        if console
        else ""
    )
    return f"""<domain type='bhyve'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/local/share/uefi-firmware/BHYVE_UEFI.fd</loader>
  </os>
  <metadata>
    <bhyvesup:policy xmlns:bhyvesup='{NS}'>
      <bhyvesup:autostart>{"yes" if autostart else "no"}</bhyvesup:autostart>
      <bhyvesup:restart-backoff>0</bhyvesup:restart-backoff>
    </bhyvesup:policy>
  </metadata>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/vm/{name}/disk0.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    {serial}
  </devices>
  {cmdline}
</domain>
"""


class SimHost:
    """A simulated FreeBSD host under a temporary directory, with *n* guests defined."""

    def __init__(self, root: Path) -> None:
        from supervisor.vmm.sim import install

        self.root = root
        self.host = install(str(root))
        self.socket = str(root / "var/run/bhyvesupd/bhyvesupd.sock")
        self.names: list[str] = []

    def define_files(self, n: int, prefix: str = "g", **kw: Any) -> list[str]:
        """Write *n* definitions straight into the domains directory (as an admin would)."""
        ddir = self.root / "usr/local/etc/bhyvesupd/domains"
        ddir.mkdir(parents=True, exist_ok=True)
        names = [f"{prefix}{i:03d}" for i in range(n)]
        for name in names:
            disk = self.root / f"var/vm/{name}/disk0.img"
            disk.parent.mkdir(parents=True, exist_ok=True)
            with open(disk, "wb") as f:
                f.truncate(16 << 20)
            (ddir / f"{name}.xml").write_text(guest_xml(name, **kw))
        self.names += names
        return names

    def load_definitions(self, *, keep_cache: bool = True) -> tuple[float, float]:
        """CPU seconds to load every definition as the daemon does: parsed (a first
        start, which also writes the cache), then from that cache (what a host's next
        boot finds when no definition changed). *keep_cache* False removes the cache
        again, so that the next daemon start is a first start."""
        from supervisor.config import load_config
        from supervisor.daemon import definition_store

        store = definition_store(self.host, load_config(None))
        assert store.cache_path is not None
        cache = Path(store.cache_path)
        cache.unlink(missing_ok=True)
        t0 = time.process_time()
        store.load_all()
        t1 = time.process_time()
        store.load_all()
        t2 = time.process_time()
        if not keep_cache:
            cache.unlink()
        return t1 - t0, t2 - t1

    def bhyve_argv(self, name: str) -> tuple[list[str], dict[str, str]]:
        """The argv and environment bhyvesupd runs for *name* (for the peer to run too)."""
        from supervisor.domain.xml import parse_domain_xml
        from supervisor.vmm import caps as capsmod
        from supervisor.vmm.argv import build_commands
        from supervisor.vmm.hostexec import resolve_argv

        xml = (self.root / f"usr/local/etc/bhyvesupd/domains/{name}.xml").read_bytes()
        domain = parse_domain_xml(xml)
        cmds = build_commands(domain, capsmod.DEFAULT, device_map_path=None)
        return resolve_argv(self.host, cmds.bhyve), dict(self.host.env)

    def teardown(self) -> None:
        from supervisor.vmm.sim import teardown

        teardown(str(self.root))


def memory_fs() -> str:
    """A tmpfs directory for the runtime files of a run that creates thousands of them
    (``BENCH_TMP`` overrides): /dev/shm where there is one, else /tmp.

    On ext4, creating a file in a directory whose block group saw many recent deletions
    (the run before, or the other supervisor's run just before) cost 0.2 to 0.9 ms of
    CPU on the machine the README's figures come from, instead of 30 us: a cost that
    depends on which side ran second, not on the supervisor. tmpfs has no such history;
    FreeBSD hosts often mount /var/run on it too.
    """
    if "BENCH_TMP" in os.environ:
        return os.environ["BENCH_TMP"]
    return "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else "/tmp"


def create_cost_us(directory: Path, count: int = 300) -> float:
    """Own CPU (us) to create, write and close one small file in *directory*: how costly
    this filesystem makes the runtime files both supervisors write."""
    probe = Path(tempfile.mkdtemp(prefix="probe-", dir=directory))
    try:
        t0 = time.thread_time()
        for i in range(count):
            fd = os.open(probe / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"12345\n")
            os.close(fd)
        return (time.thread_time() - t0) / count * 1e6
    finally:
        shutil.rmtree(probe, ignore_errors=True)


@contextlib.contextmanager
def temp_root(prefix: str, base: str | None = None) -> Iterator[Path]:
    """A fresh directory for one run, removed afterwards: under *base*, or ``BENCH_TMP``,
    or /tmp."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=base or os.environ.get("BENCH_TMP", "/tmp")))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def compile_package() -> None:
    """Compile the supervisor's modules to bytecode, as installing the package does.

    The daemon is measured as a user runs it: from an installed package, whose modules
    were compiled at install time (pip and FreeBSD's ports both do). From a source tree
    with PYTHONDONTWRITEBYTECODE set, every start would compile them again, 0.15 s of
    CPU that no installed bhyvesupd spends. supervisord, from Debian's package, runs
    from bytecode too. Cheap when nothing changed (only timestamps are compared).
    """
    import compileall

    compileall.compile_dir(str(REPO / "supervisor"), quiet=1)


class Daemon:
    """bhyvesupd on a simulated host, started as a user would start it."""

    def __init__(
        self,
        sim: SimHost,
        log_path: Path,
        *,
        keep_guests: bool = False,
        log_level: str | None = None,
    ) -> None:
        compile_package()
        self.sim = sim
        self.t_exec = time.monotonic()
        argv = [sys.executable, "-m", "supervisor", "--sim", str(sim.root), "--no-examples"]
        if keep_guests:
            argv.append("--keep-guests")
        if log_level is not None:
            argv += ["--log-level", log_level]
        self.log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        self.pid = self.proc.pid

    def wait_socket(self, timeout: float = 60.0) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError("bhyvesupd exited during start-up")
            return os.path.exists(self.sim.socket)

        wait_for("bhyvesupd's socket", up, timeout)

    def client(self, timeout: float = 60.0) -> Client:
        return Client(self.sim.socket, timeout=timeout)

    def call(self, method: str, **params: Any) -> Any:
        with self.client() as c:
            return c.call(method, **params)

    def stop(self, timeout: float = 120.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- supervisord -------------------------------------------------------------------------


class _UnixHTTPConnection(HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def make_connection(self, host: Any) -> HTTPConnection:
        # supervisorctl opens a fresh HTTP connection per call; so do we.
        return _UnixHTTPConnection(self.path)


class Supervisord:
    """Debian's supervisord running the same simulated bhyve processes.

    Its module is also called ``supervisor``, so it runs under the system Python from
    /usr/bin and is spoken to with the standard library's XML-RPC client.
    """

    def __init__(
        self,
        workdir: Path,
        programs: dict[str, tuple[list[str], dict[str, str]]],
        *,
        autorestart: str = "unexpected",
        loglevel: str = "warn",
    ):
        self.workdir = workdir
        self.sock = str(workdir / "supervisor.sock")
        self.conf = workdir / "supervisord.conf"
        lines = [
            "[unix_http_server]",
            f"file={self.sock}",
            "[supervisord]",
            f"logfile={workdir / 'supervisord.log'}",
            f"pidfile={workdir / 'supervisord.pid'}",
            f"childlogdir={workdir}",
            "nodaemon=true",
            "minfds=20000",
            f"loglevel={loglevel}",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl=unix://{self.sock}",
        ]
        for name, (argv, env) in programs.items():
            envs = ",".join(f'{k}="{v}"' for k, v in env.items())
            lines += [
                f"[program:{name}]",
                "command=" + " ".join(_quote(a) for a in argv),
                "autostart=true",
                f"autorestart={autorestart}",
                "exitcodes=1,2",
                # Counted as running once spawned, as bhyvesupd counts a spawned bhyve.
                "startsecs=0",
                "stopsignal=TERM",
                # Its default: the child's output goes to a log file, as bhyve's does.
                "redirect_stderr=true",
            ]
            if envs:
                lines.append(f"environment={envs}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.t_exec = time.monotonic()
        self.log = open(workdir / "supervisord.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [SUPERVISORD, "-c", str(self.conf)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def rpc(self) -> Any:
        return xmlrpc.client.ServerProxy(
            "http://localhost/RPC2", transport=_UnixTransport(self.sock)
        ).supervisor

    def wait_socket(self, timeout: float = 60.0) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError("supervisord exited during start-up")
            if not os.path.exists(self.sock):
                return False
            try:
                self.rpc().getState()
                return True
            except (OSError, xmlrpc.client.Fault):
                return False

        wait_for("supervisord's socket", up, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _quote(arg: str) -> str:
    # supervisord splits command= with shlex; its values also expand %(...)s.
    import shlex

    return shlex.quote(arg.replace("%", "%%"))
