"""The NBD server of the QEMU engine: its codec, and QEMU's own NBD client against it."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from supervisor.vmm.sim import nbd, qemurun
from supervisor.vmm.sim.bhyve import _BlockWork
from supervisor.vmm.sim.qmp import Greeting, QmpSession, Reply
from tests.conftest import require_real


def test_the_handshake_offers_fixed_newstyle_and_answers_go_with_size_and_flags() -> None:
    g = nbd.greeting()
    assert g[:8] == b"NBDMAGIC"
    assert struct.unpack(">QH", g[8:]) == (nbd.IHAVEOPT, 3)
    header = struct.pack(">QII", nbd.IHAVEOPT, nbd.OPT_GO, 6)
    assert nbd.parse_option_header(header) == (nbd.OPT_GO, 6)
    replies = nbd.export_info_replies(nbd.OPT_GO, 1 << 20, readonly=True)
    magic, option, kind, length = struct.unpack(">QIII", replies[:20])
    assert (magic, option, kind, length) == (nbd.OPTION_REPLY_MAGIC, nbd.OPT_GO, nbd.REP_INFO, 12)
    info, size, flags = struct.unpack(">HQH", replies[20:32])
    assert (info, size) == (nbd.INFO_EXPORT, 1 << 20)
    assert flags & nbd.TFLAG_READ_ONLY
    assert flags & nbd.TFLAG_SEND_FLUSH
    assert struct.unpack(">QIII", replies[32:])[2] == nbd.REP_ACK
    # The old way: size and flags, padded unless the client said NO_ZEROES.
    assert len(nbd.export_name_reply(1, False, 0)) == 134
    assert len(nbd.export_name_reply(1, False, nbd.CLIENT_FLAG_NO_ZEROES)) == 10


def test_bad_magic_and_bad_requests_are_refused() -> None:
    with pytest.raises(nbd.NbdProtocolError, match="option magic"):
        nbd.parse_option_header(struct.pack(">QII", 1, nbd.OPT_GO, 0))
    with pytest.raises(nbd.NbdProtocolError, match="request magic"):
        nbd.parse_request(struct.pack(">IHHQQI", 7, 0, nbd.CMD_READ, 1, 0, 512))
    with pytest.raises(nbd.NbdProtocolError, match="request of"):
        nbd.parse_request(
            struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_WRITE, 1, 0, 1 << 30)
        )
    req = nbd.parse_request(
        struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_WRITE, 9, 4096, 512)
    )
    assert req == nbd.Request(0, nbd.CMD_WRITE, 9, 4096, 512)
    assert nbd.check_request(req, 8192, readonly=False) == 0
    assert nbd.check_request(req, 8192, readonly=True) == nbd.EPERM
    assert nbd.check_request(req, 4096, readonly=False) == nbd.ENOSPC
    trim = nbd.Request(0, 4, 1, 0, 512)
    assert nbd.check_request(trim, 8192, readonly=False) == nbd.EINVAL
    assert nbd.simple_reply(9, nbd.EIO) == struct.pack(">IIQ", nbd.SIMPLE_REPLY_MAGIC, 5, 9)


def _hmp(sock: socket.socket, session: QmpSession, command: str) -> str:
    ident, wire = session.command("human-monitor-command", {"command-line": command})
    sock.sendall(wire)
    while True:
        data = sock.recv(65536)
        assert data, "QEMU closed QMP"
        for m in session.feed(data):
            if isinstance(m, Reply) and m.id == ident:
                assert m.ok, m.error
                return str(m.value)


def test_qemus_nbd_client_writes_and_reads_through_the_worker_thread(tmp_path: Path) -> None:
    """QEMU's block layer (HMP qemu-io, no guest needed) against the served disk: every
    read and write is done on the worker thread that takes the disk's work queue."""
    require_real(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64")
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    fd = os.open(disk, os.O_RDWR)
    work: queue.SimpleQueue[_BlockWork] = queue.SimpleQueue()
    done_on: set[str] = set()

    def worker() -> None:
        while True:
            item = work.get()
            done_on.add(threading.current_thread().name)
            item.result = item.fn()
            item.done.set()

    threading.Thread(target=worker, name="blk-3:0-0", daemon=True).start()
    ours, theirs = socket.socketpair()
    server = threading.Thread(target=qemurun._serve_disk, args=(ours, fd, False, work))
    server.start()
    qmp_ours, qmp_theirs = socket.socketpair()
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64",
            *("-machine", "q35,accel=tcg", "-nodefaults", "-display", "none", "-S"),
            "-drive",
            f"driver=nbd,server.type=fd,server.str={theirs.fileno()},if=none,id=d0",
            *("-chardev", f"socket,id=qmp,fd={qmp_theirs.fileno()},server=off"),
            *("-mon", "chardev=qmp,mode=control"),
        ],
        pass_fds=(theirs.fileno(), qmp_theirs.fileno()),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    theirs.close()
    qmp_theirs.close()
    try:
        qmp_ours.settimeout(30)
        session = QmpSession()
        ident, wire = session.command("qmp_capabilities")
        ready = False
        while not ready:
            data = qmp_ours.recv(65536)
            assert data, proc.communicate(timeout=10)[0].decode()
            for m in session.feed(data):
                if isinstance(m, Greeting):
                    qmp_ours.sendall(wire)
                ready = ready or (isinstance(m, Reply) and m.id == ident)
        # qemu-io prints on QEMU's stdout, not in the monitor's reply.
        for command in (
            "write -P 0xab 65536 8192",
            "read -P 0xab 65536 8192",
            "read 1048576 512",  # past the end: refused by the server, reported by QEMU
            "flush",
        ):
            _hmp(qmp_ours, session, f'qemu-io d0 "{command}"')
        qmp_ours.sendall(session.command("quit")[1])
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        qmp_ours.close()
        server.join(timeout=10)
        os.close(fd)
    text = out.decode()
    assert "wrote 8192/8192 bytes at offset 65536" in text
    assert "read 8192/8192 bytes at offset 65536" in text
    assert "Pattern verification failed" not in text
    assert "read failed" in text
    assert disk.read_bytes()[65536 : 65536 + 8192] == b"\xab" * 8192
    assert done_on == {"blk-3:0-0"}
    assert not server.is_alive()  # QEMU's going ended the session
