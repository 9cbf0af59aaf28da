"""End to end: streamed ``domain.block_peek`` / ``domain.memory_peek`` through the real daemon.

A streamed call replies first (no ``data``), then the connection carries exactly ``size``
raw bytes. The bytes must be the file's bytes, refusals must be ordinary JSON errors
naming the field (the connection still speaks JSON after one), and a client that leaves
mid-stream must cost the daemon nothing.
"""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.errors import OutOfRangeError
from supervisor.vmm.sim.guest import SIGNATURE_GPA
from tests.test_daemon_e2e import Sim, guest_xml, running_daemon

MB = 1 << 20
GB = 1 << 30


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Sim]:
    with running_daemon(tmp_path, "--no-examples") as s:
        s.define("web")
        image = s.root / "var/vm/web/disk0.img"
        with open(image, "r+b") as f:  # data, a hole, data: 16 MiB in all
            f.write(os.urandom(3 * MB))
            f.seek(9 * MB)
            f.write(os.urandom(2 * MB + 123))
        s.call("domain.start", name="web")
        s.wait_state("web", "running")
        s.wait_for("the VM's memory", lambda: s.vmm("web").exists())
        yield s


def test_streamed_block_peek_is_the_disk_bytes(web: Sim) -> None:
    image = (web.root / "var/vm/web/disk0.img").read_bytes()
    for offset, size in [(0, 16 * MB), (MB - 7, 10 * MB + 3), (16 * MB - 1, 1)]:
        sink = io.BytesIO()
        with web.client() as c:
            reply = c.call_stream(
                "domain.block_peek", sink, name="web", disk="vda", offset=offset, size=size
            )
        assert reply == {"offset": offset, "size": size, "stream": True}
        assert sink.getvalue() == image[offset : offset + size]


def test_streamed_memory_peek_is_the_guest_memory(web: Sim) -> None:
    sink = io.BytesIO()
    with web.client() as c:
        c.call_stream("domain.memory_peek", sink, name="web", start=0, size=8 * MB)
    data = sink.getvalue()
    assert len(data) == 8 * MB
    assert data[SIGNATURE_GPA : SIGNATURE_GPA + 14] == b"BHYVESIM:web:1"
    with open(web.vmm("web"), "rb") as f:
        assert data == f.read(8 * MB)


class _SameAs(io.RawIOBase):
    """A sink that checks what it is given against *path* from *start* on, as it comes."""

    def __init__(self, path: Path, start: int) -> None:
        self.file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.file.seek(start)
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:
        assert self.file.read(len(b)) == bytes(b), f"differs within {len(b)} bytes at +{self.count}"
        self.count += len(b)
        return len(b)

    def close(self) -> None:
        self.file.close()
        super().close()


def test_streamed_memory_peek_across_the_pci_hole_to_the_end_of_ram(tmp_path: Path) -> None:
    # More than 3 GiB: RAM at [0, 3G) and [4G, 4G + 64M), the PCI hole between. RAM is
    # sent from mappings, the hole is read.
    xml = guest_xml("big").replace(
        "<memory unit='MiB'>128</memory>", "<memory unit='MiB'>3136</memory>"
    )
    with running_daemon(tmp_path, "--no-examples") as s:
        disk = s.root / "var/vm/big/disk0.img"
        disk.parent.mkdir(parents=True)
        with open(disk, "wb") as f:
            f.truncate(16 * MB)
        s.call("domain.define", xml=xml)
        s.call("domain.start", name="big")
        s.wait_state("big", "running")
        s.wait_for("the VM's memory", lambda: s.vmm("big").exists())
        vmm = s.vmm("big")
        # Bytes that are not zeros on both sides of the hole, and in it where device
        # memory would be (the simulated file reads them; the kernel would too).
        with open(vmm, "r+b") as f:
            f.seek(3 * GB - MB)
            f.write(os.urandom(MB))
            f.seek(3 * GB + 512 * MB + 11)
            f.write(os.urandom(MB))
            f.seek(4 * GB + 64 * MB - MB - 5)
            f.write(os.urandom(MB + 5))
        ram_end = 4 * GB + 64 * MB
        for start, size in [(3 * GB - MB + 3, ram_end - (3 * GB - MB + 3)), (ram_end - 3, 3)]:
            with _SameAs(vmm, start) as sink, s.client() as c:
                c.call_stream("domain.memory_peek", sink, name="big", start=start, size=size)
            assert sink.count == size
        log = (s.root / "var/log/bhyvesupd/bhyvesupd.log").read_text()
        assert "bulk_stream_unmappable" not in log


def test_streamed_peek_refuses_out_of_range_and_stays_json(web: Sim) -> None:
    with web.client() as c:
        with pytest.raises(OutOfRangeError) as e:
            c.call_stream(
                "domain.block_peek", io.BytesIO(), name="web", disk="vda", offset=0, size=17 * MB
            )
        assert e.value.field == "offset"
        with pytest.raises(OutOfRangeError) as e:
            c.call_stream(
                "domain.block_peek", io.BytesIO(), name="web", disk="vda", offset=0, size=0
            )
        assert e.value.field == "size"
        ram = 128 * MB
        with pytest.raises(OutOfRangeError) as e:
            c.call_stream("domain.memory_peek", io.BytesIO(), name="web", start=ram - 8, size=16)
        assert e.value.field == "size"
        # The base64 form keeps its 1 MiB cap; the same connection still answers JSON.
        with pytest.raises(OutOfRangeError) as e:
            c.call("domain.block_peek", name="web", disk="vda", offset=0, size=MB + 1)
        assert e.value.field == "size"
        assert c.call("domain.get_info", name="web")["state"] == "running"


@pytest.mark.parametrize("method", ["domain.block_peek", "domain.memory_peek"])
def test_a_client_leaving_mid_stream_does_not_hurt_the_daemon(
    web: Sim, tmp_path: Path, method: str
) -> None:
    where = {"disk": "vda", "offset": 0} if method == "domain.block_peek" else {"start": 0}
    for _ in range(3):
        c = web.client()
        reply = c.call(method, name="web", **where, size=16 * MB, stream=True)
        assert reply["size"] == 16 * MB
        sock, rest = c.raw_socket()
        got = len(rest) + len(sock.recv(65536))
        assert 0 < got < 16 * MB
        # Leave with unread bytes queued: the daemon's next write fails (reset).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    # The daemon answers, the guest runs, and a full stream still arrives whole.
    assert web.info("web")["state"] == "running"
    sink = io.BytesIO()
    with web.client() as c:
        c.call_stream(method, sink, name="web", **where, size=16 * MB)
    assert len(sink.getvalue()) == 16 * MB
    assert web.proc.poll() is None
    log = (tmp_path / "daemon.out").read_text()
    assert "Traceback" not in log
    assert "error" not in log.lower()


def test_peek_into_the_clients_own_file(web: Sim, tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    with open(out, "wb") as f, web.client() as c:
        reply = c.call_to_fd("domain.memory_peek", f.fileno(), name="web", start=0, size=40 * MB)
    assert reply == {"start": 0, "size": 40 * MB, "stream": True, "to_fd": True, "written": 40 * MB}
    with open(web.vmm("web"), "rb") as f:
        assert out.read_bytes() == f.read(40 * MB)
    image = (web.root / "var/vm/web/disk0.img").read_bytes()
    with open(out, "wb") as f, web.client() as c:
        c.call_to_fd(
            "domain.block_peek", f.fileno(), name="web", disk="vda", offset=MB - 7, size=10 * MB
        )
    assert out.read_bytes() == image[MB - 7 : 11 * MB - 7]


def test_peek_into_a_pipe(web: Sim) -> None:
    r, w = os.pipe()
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(r, 1 << 20):
            got.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        with web.client() as c:
            c.call_to_fd("domain.memory_peek", w, name="web", start=SIGNATURE_GPA, size=3 * MB)
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    assert len(got) == 3 * MB
    assert got.startswith(b"BHYVESIM:web:1")


def test_to_fd_without_a_descriptor_is_answered_not_hung(web: Sim) -> None:
    with web.client() as c:
        reply = c.call("domain.memory_peek", name="web", start=0, size=MB, to_fd=True)
        assert reply["to_fd"] is True
        sock, rest = c.raw_socket()
    with sock:
        assert rest == b""
        sock.sendall(b"F")  # a byte, but no SCM_RIGHTS
        answer = sock.makefile("rb").readline()
    assert b'"written": 0' in answer
    assert b"no descriptor received" in answer


def test_to_fd_refusals_are_ordinary_errors(web: Sim, tmp_path: Path) -> None:
    with open(tmp_path / "x", "wb") as f, web.client() as c:
        with pytest.raises(OutOfRangeError, match="size"):
            c.call_to_fd("domain.memory_peek", f.fileno(), name="web", start=0, size=4 * GB)
        # The connection still speaks JSON after a refusal.
        assert c.call("domain.get_info", name="web")["state"] == "running"
    assert (tmp_path / "x").stat().st_size == 0
