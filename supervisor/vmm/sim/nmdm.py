"""nmdm(4) for the simulated host: a relay process that joins two pseudo-terminals.

Theory of operation
-------------------

On FreeBSD an nmdm pair is two tty nodes, ``/dev/nmdm<X>A`` and ``/dev/nmdm<X>B``,
created together by any devfs lookup of either name. What one end writes, the other
reads. bhyve opens A (raw, CLOCAL, non-blocking) and the supervisor or a human opens
B; either side may close and open again while the other carries on.

Linux has no such device. One pty pair is not a substitute: bhyve and the supervisor
both need a *slave* they can open by path, and a pty master, once closed, cannot be
opened again. So each simulated pair is **two** ptys and a relay that holds both
masters and copies bytes between them::

    bhyve ── /dev/pts/N (A slave) ═ master A ─┐
                                               relay
    you   ── /dev/pts/M (B slave) ═ master B ─┘

The slaves are exposed at the nmdm paths of the simulated root as symlinks
(``ROOT/dev/nmdm<X>A -> /dev/pts/N``), so an ``open()`` by path works from any
process, exactly as on the real host.

There is one relay process per simulated root. It is started on demand by the first
:func:`ensure_pair`, runs in its own session (a ``kill -9`` of the supervisor that
started it leaves it running, as the kernel would be), and is found again through a
control socket in ``ROOT/.simkernel/`` (outside the FreeBSD trees, so nothing that
speaks FreeBSD paths can see it). The relay's pid file there is locked for as long as
it lives, which is how a second start knows it is not needed and how :func:`stop_relay`
knows it has gone.

Flow control. The relay reads a master only while its buffer for that direction holds
less than :data:`BUFFER_LIMIT`, and writes to the other master as fast as that pty
accepts. When nobody reads an end, its pty input queue, then the relay's buffer, then
the writer's pty output queue fill; a non-blocking writer (bhyve) then gets
``EAGAIN`` and drops its output, which is what bhyve does with a full nmdm queue.
Nothing in the relay ever blocks, and nothing is lost between the two ptys: once the
reader comes back it gets the buffered bytes, in order.

Idle cost. A Linux pty master whose slave nobody has open reports hangup without end,
so a poller would spin. The relay therefore keeps one descriptor of each slave open
itself; the masters then only wake it for data.

Where the simulation deviates from the kernel, and why:

- Pairs are not torn down when the last open end is closed; they live until
  :func:`destroy_pair` or :func:`stop_relay`. A lookup that recreates a torn-down pair
  cannot be intercepted on Linux, so keeping pairs avoids a window in which an
  ``open()`` would find no node.
- Closing one end does not drop carrier on the other. The supervisor and bhyve both
  set CLOCAL, for which the kernel does nothing either; a reader *without* CLOCAL
  would see EOF on FreeBSD and keeps waiting here.
- Both ends start raw (see :func:`supervisor.vmm.platform._nmdm.raw_attrs`) and keep
  their termios across closes. The kernel starts each first open with the default,
  echoing settings; here an end that nobody has opened would echo the other end's
  output straight back into it.
- Nodes are owned by the relay's user with mode 0600 (root:wheel 0600 on FreeBSD).
- Bytes written while the reader is away are kept up to :data:`BUFFER_LIMIT` plus the
  kernel's pty queues, not just the tty queues.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs

import supervisor
from supervisor._record import Record
from supervisor._sockutil import connect_unix, recv_line
from supervisor.errors import HostNotReadyError, SupervisorError
from supervisor.vmm.platform._nmdm import NmdmPath, make_raw, parse_nmdm_path

#: The directory under a simulated root that holds the simulated kernel's state.
KERNEL_DIR = ".simkernel"
SOCKET_NAME = "nmdm.sock"
PID_NAME = "nmdm.pid"
LOCK_NAME = "nmdm.lock"
LOG_NAME = "nmdm.log"

#: Bytes the relay holds per direction of a pair before it stops reading the writer.
BUFFER_LIMIT = 256 * 1024
#: The most the relay reads from a master at once.
READ_SIZE = 64 * 1024
#: How long a client waits for the relay to start, answer, or go away (seconds).
START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: How often an idle relay checks that its simulated host still exists (seconds);
#: the relay takes it from ``$BHYVESIM_ORPHAN_CHECK`` when that is set.
ORPHAN_CHECK = 10.0

_MODULE = "supervisor.vmm.sim.nmdm"


# --------------------------------------------------------------------------------------
# Client side: what the simulated bhyve, the supervisor and the tests call.


def ensure_pair(root: str, path: str) -> None:
    """Make sure the nmdm pair that *path* belongs to exists on the simulated host.

    The equivalent of a devfs lookup of *path* on FreeBSD: afterwards both
    ``ROOT/dev/nmdm<X>A`` and ``ROOT/dev/nmdm<X>B`` can be opened. Starts the
    simulated host's relay if it is not running. Blocks.

    Args:
        root: the simulated host's root directory.
        path: the FreeBSD path of either end, ``/dev/nmdm<X>A`` or ``/dev/nmdm<X>B``.

    Raises:
        InvalidValueError: *path* is not an nmdm name.
        HostNotReadyError: the relay could not be started or did not answer.
    """
    end = parse_nmdm_path(path)
    _request(root, {"op": "ensure", "path": end.path}, start=True)


def destroy_pair(root: str, path: str) -> None:
    """Remove the pair that *path* belongs to; anyone holding an end sees a hangup.

    Nothing happens when the pair does not exist or no relay runs.

    Raises:
        InvalidValueError: *path* is not an nmdm name.
    """
    end = parse_nmdm_path(path)
    _request(root, {"op": "destroy", "path": end.path}, start=False)


def list_pairs(root: str) -> list[str]:
    """The FreeBSD paths of both ends of every pair on the simulated host, sorted."""
    reply = _request(root, {"op": "list"}, start=False)
    if reply is None:
        return []
    return [str(p) for p in reply["paths"]]


def relay_pid(root: str) -> int | None:
    """The pid of the simulated host's relay, or None when none runs."""
    kdir = _kernel_dir(root)
    try:
        fd = os.open(kdir / PID_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not _is_locked(fd):
            return None
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None


def stop_relay(root: str) -> None:
    """Stop the simulated host's relay, if it runs, and wait until it has gone.

    Every pair disappears with it. A relay that does not go within
    :data:`STOP_TIMEOUT` seconds is killed.
    """
    kdir = _kernel_dir(root)
    pid = relay_pid(root)
    try:
        _request(root, {"op": "stop"}, start=False)
    except HostNotReadyError:
        pass  # a wedged relay: the kill below deals with it
    if pid is not None and not _wait_unlocked(kdir / PID_NAME, STOP_TIMEOUT):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_unlocked(kdir / PID_NAME, STOP_TIMEOUT)
    _remove_links(Path(root))


def _kernel_dir(root: str) -> Path:
    return Path(root) / KERNEL_DIR


def _request(root: str, request: dict[str, Any], *, start: bool) -> dict[str, Any] | None:
    """Send one request to the relay; None when no relay runs and *start* is false."""
    sock = _connect(root)
    if sock is None:
        if not start:
            return None
        sock = _start_relay(root)
    with sock:
        try:
            sock.sendall(encode_request(request))
            line = recv_line(sock)
        except OSError as exc:
            raise HostNotReadyError(
                f"nmdm relay of {root}: no answer to {request['op']!r}: {exc}"
            ) from exc
    return decode_reply(root, request, line)


def encode_request(request: dict[str, Any]) -> bytes:
    """One request line of the relay's control protocol."""
    return json.dumps(request).encode() + b"\n"


def decode_reply(root: str, request: dict[str, Any], line: bytes) -> dict[str, Any]:
    """The relay's answer to *request*, read as *line* (empty: the relay hung up).

    Raises:
        HostNotReadyError: the relay hung up without answering.
        SupervisorError: the relay refused the request.
    """
    if not line:
        if request["op"] == "stop":
            return {}
        raise HostNotReadyError(f"nmdm relay of {root}: closed without answering")
    reply: dict[str, Any] = json.loads(line)
    if "error" in reply:
        raise SupervisorError(f"nmdm relay of {root}: {reply['error']}")
    return reply


def open_control_dir(root: str) -> int | None:
    """A descriptor of the directory holding the relay's control socket, or None when
    the simulated kernel has no such directory yet (no relay ever ran). Connect to
    :func:`control_address` of it while it is open; the caller closes it."""
    try:
        return os.open(_kernel_dir(root), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def control_address(dir_fd: int) -> str:
    """The address of the relay's control socket, through *dir_fd*
    (:func:`open_control_dir`)."""
    return _socket_address(dir_fd)


def _socket_address(dir_fd: int) -> str:
    # A Unix socket path is limited to 107 bytes and test directories run long; going
    # through the directory's descriptor keeps the address short wherever ROOT is.
    return f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}"


def _connect(root: str) -> socket.socket | None:
    dir_fd = open_control_dir(root)
    if dir_fd is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(REQUEST_TIMEOUT)
        connect_unix(sock, _socket_address(dir_fd), REQUEST_TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dir_fd)
    return sock


def _start_relay(root: str) -> socket.socket:
    kdir = _kernel_dir(root)
    kdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(kdir / LOCK_NAME, "ab") as lock:
        # Two supervisors (or a supervisor and the simulated bhyve) may both find no
        # relay; the lock makes the second one find the first one's.
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _connect(root)
        if sock is not None:
            return sock
        env = dict(os.environ)
        package_root = str(Path(supervisor.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        with open(kdir / LOG_NAME, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", _MODULE, "serve", str(root)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        try:
            status = proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = -signal.SIGKILL
        sock = _connect(root)
        if status != 0 or sock is None:
            if sock is not None:
                sock.close()
            raise HostNotReadyError(
                f"nmdm relay of {root} did not start (status {status}); "
                f"see {kdir / LOG_NAME}: {_log_tail(kdir / LOG_NAME)}"
            )
        return sock


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _is_locked(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _wait_unlocked(path: Path, timeout: float) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        deadline = time.monotonic() + timeout
        while _is_locked(fd):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True
    finally:
        os.close(fd)


def _remove_links(root: Path) -> None:
    """Remove every nmdm node symlink under ``ROOT/dev`` that points at a pty."""
    dev = root / "dev"
    try:
        entries = list(os.scandir(dev))
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.name.startswith("nmdm") or not entry.is_symlink():
            continue
        if os.readlink(entry.path).startswith("/dev/pts/"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


# --------------------------------------------------------------------------------------
# The relay process.


@attrs.define(repr=False)
class _End(Record):
    """One end of a simulated pair: a pty whose slave is exposed at the nmdm path."""

    master: int
    #: The relay's own descriptor of the slave, so the master never reports hangup.
    held: int
    tty: str
    link: Path
    #: Bytes read from this end's master, waiting to be written to the peer's master.
    pending: bytearray = attrs.field(factory=bytearray)
    events: int = 0


@attrs.define(repr=False)
class _Pair(Record):
    name: str
    a: _End
    b: _End

    def peer(self, end: _End) -> _End:
        return self.b if end is self.a else self.a

    def paths(self) -> list[str]:
        return [f"/dev/{self.name}A", f"/dev/{self.name}B"]


class _Stop(Exception):
    """Raised inside the relay's loop to leave it."""


@attrs.define(repr=False)
class _Client(Record):
    sock: socket.socket
    received: bytearray = attrs.field(factory=bytearray)


class _Relay:
    def __init__(
        self, root: Path, listener: socket.socket, socket_ino: int, orphan_check: float
    ) -> None:
        self.root = root
        self.orphan_check = orphan_check
        self.listener = listener
        self.socket_ino = socket_ino
        self.selector = selectors.DefaultSelector()
        self.pairs: dict[str, _Pair] = {}
        self.masters: dict[int, tuple[_Pair, _End]] = {}
        self.clients: dict[int, _Client] = {}

    def run(self) -> None:
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        try:
            while True:
                ready = self.selector.select(self.orphan_check)
                if not ready and self._orphaned():
                    break
                for key, mask in ready:
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fd in self.clients:
                        self._serve_client(self.clients[key.fd])
                    elif key.fd in self.masters:
                        pair, end = self.masters[key.fd]
                        if mask & selectors.EVENT_READ:
                            self._read(pair, end)
                        if mask & selectors.EVENT_WRITE:
                            self._flush(pair, pair.peer(end))
        except _Stop:
            pass
        finally:
            for name in list(self.pairs):
                self._destroy(name)
            for client in list(self.clients.values()):
                client.sock.close()
            self.selector.close()

    def _orphaned(self) -> bool:
        # A simulated host whose directory was removed without stop_relay() would
        # otherwise keep its relay for ever: nobody can find it any more.
        try:
            return os.stat(self.root / KERNEL_DIR / SOCKET_NAME).st_ino != self.socket_ino
        except FileNotFoundError:
            return True

    # Data path -------------------------------------------------------------------

    def _read(self, pair: _Pair, end: _End) -> None:
        try:
            data = os.read(end.master, min(READ_SIZE, BUFFER_LIMIT - len(end.pending)))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # EIO would mean the slave hung up, which the held descriptor prevents.
            if exc.errno != errno.EIO:
                raise
            return
        end.pending += data
        self._flush(pair, end)

    def _flush(self, pair: _Pair, source: _End) -> None:
        """Write what *source* sent to the peer's master, as far as it will take it."""
        target = pair.peer(source)
        buf = source.pending
        while buf:
            try:
                written = os.write(target.master, buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                break
            del buf[:written]
        self._watch(source, pair)
        self._watch(target, pair)

    def _watch(self, end: _End, pair: _Pair) -> None:
        events = 0
        if len(end.pending) < BUFFER_LIMIT:
            events |= selectors.EVENT_READ
        if pair.peer(end).pending:
            events |= selectors.EVENT_WRITE
        if events == end.events:
            return
        if end.events == 0:
            self.selector.register(end.master, events)
        elif events == 0:
            self.selector.unregister(end.master)
        else:
            self.selector.modify(end.master, events)
        end.events = events

    # Pairs -----------------------------------------------------------------------

    def _ensure(self, node: NmdmPath) -> _Pair:
        pair = self.pairs.get(node.pair)
        if pair is None:
            dev = self.root / "dev"
            dev.mkdir(parents=True, exist_ok=True)
            a = self._open_end(dev, node.pair + "A")
            try:
                b = self._open_end(dev, node.pair + "B")
            except BaseException:
                self._close_end(a)
                raise
            pair = _Pair(node.pair, a, b)
            self.pairs[node.pair] = pair
            for end in (pair.a, pair.b):
                self.masters[end.master] = (pair, end)
                self._watch(end, pair)
        for end in (pair.a, pair.b):
            _link(end.tty, end.link)
        return pair

    def _open_end(self, dev: Path, name: str) -> _End:
        master, slave = os.openpty()
        try:
            os.set_blocking(master, False)
            make_raw(slave)
            os.fchmod(slave, 0o600)
            end = _End(master=master, held=slave, tty=os.ttyname(slave), link=dev / name)
            _link(end.tty, end.link)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        return end

    def _close_end(self, end: _End) -> None:
        if end.events:
            self.selector.unregister(end.master)
            end.events = 0
        self.masters.pop(end.master, None)
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(end.link) == end.tty:
                os.unlink(end.link)
        os.close(end.master)
        os.close(end.held)

    def _destroy(self, name: str) -> None:
        pair = self.pairs.pop(name, None)
        if pair is not None:
            self._close_end(pair.a)
            self._close_end(pair.b)

    # Control socket --------------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.settimeout(REQUEST_TIMEOUT)
        self.clients[sock.fileno()] = _Client(sock)
        self.selector.register(sock, selectors.EVENT_READ)

    def _serve_client(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop_client(client)
            return
        client.received += data
        *lines, rest = client.received.split(b"\n")
        client.received = rest
        # The answers to everything this read brought go back in one write: a daemon
        # asking for all its guests' pairs at once then wakes once, not once a pair.
        replies: list[bytes] = []
        stopping = False
        for line in lines:
            reply = self._answer(bytes(line))
            replies.append(json.dumps(reply).encode() + b"\n")
            if reply.get("stopping"):
                stopping = True
                break
        if replies:
            try:
                client.sock.sendall(b"".join(replies))
            except OSError:
                self._drop_client(client)
                return
        if stopping:
            self._drop_client(client)
            raise _Stop

    def _drop_client(self, client: _Client) -> None:
        fd = client.sock.fileno()
        self.selector.unregister(client.sock)
        self.clients.pop(fd, None)
        client.sock.close()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            op = request["op"]
            if op == "ensure":
                pair = self._ensure(parse_nmdm_path(request["path"]))
                return {"ok": True, "ttys": [pair.a.tty, pair.b.tty]}
            if op == "destroy":
                self._destroy(parse_nmdm_path(request["path"]).pair)
                return {"ok": True}
            if op == "list":
                return {
                    "ok": True,
                    "paths": sorted(p for x in self.pairs.values() for p in x.paths()),
                }
            if op == "stop":
                return {"ok": True, "stopping": True}
            return {"error": f"unknown request {op!r}"}
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}


def _link(target: str, link: Path) -> None:
    try:
        if os.readlink(link) == target:
            return
    except OSError:
        pass
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _serve(root: Path) -> int:
    """Become the relay of *root*: bind, detach, and run until told to stop."""
    kdir = root / KERNEL_DIR
    kdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid_fd = os.open(kdir / PID_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(pid_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another relay already serves this root
    # Links left by a relay that was killed point at ptys that are gone or reused.
    _remove_links(root)
    dir_fd = os.open(kdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        address = _socket_address(dir_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(address)
    finally:
        os.close(dir_fd)
    # Every guest of a host starting at once asks at once.
    listener.listen(socket.SOMAXCONN)
    socket_ino = os.stat(kdir / SOCKET_NAME).st_ino
    # The starter waits for this process to exit; the relay carries on in the child,
    # which is nobody's child it could be reaped by by mistake.
    if os.fork() != 0:
        os._exit(0)
    os.ftruncate(pid_fd, 0)
    os.pwrite(pid_fd, f"{os.getpid()}\n".encode(), 0)
    os.chdir("/")  # pin no directory of whoever started it
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_term(signum: int, frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    try:
        orphan_check = float(os.environ.get("BHYVESIM_ORPHAN_CHECK", ORPHAN_CHECK))
        _Relay(root, listener, socket_ino, orphan_check).run()
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(kdir / SOCKET_NAME).st_ino == socket_ino:
                os.unlink(kdir / SOCKET_NAME)
        listener.close()
        _remove_links(root)
        os.ftruncate(pid_fd, 0)
    return 0


def main(argv: list[str]) -> int:
    """``python -m supervisor.vmm.sim.nmdm serve ROOT``: run the relay of ROOT."""
    if len(argv) != 2 or argv[0] != "serve":
        print(f"usage: python -m {_MODULE} serve ROOT", file=sys.stderr)
        return 64
    return _serve(Path(argv[1]).resolve())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
