"""Peek and copy throughput against the physical limits: ``dd`` and ``cp --sparse=always``.

- ``domain.block_peek(name, disk, offset, size)`` over the socket versus ``dd`` reading the
  same image file in blocks of the same size;
- ``domain.memory_peek(name, start, size)`` versus ``dd`` of the same ``/dev/vmm/NAME``
  memory file;
- ``domain.block_copy`` of a sparse image versus ``cp --sparse=always`` of it, and how
  sparse each copy is.

A daemon that does not have a method answers "method not found": the figure is then
printed as unavailable (with the peer's figure), and lights up once the method lands.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Daemon, SimHost, report, temp_root, wait_for
from supervisor.rpc.errors import MethodNotFoundError

MB = 1 << 20


def _dd(path: str, block: int, total: int) -> float:
    t0 = time.monotonic()
    r = subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", f"bs={block}", f"count={total // block}"],
        check=False,
        capture_output=True,
    )
    if r.returncode != 0:
        raise RuntimeError(f"dd of {path} failed: {r.stderr.decode().strip()}")
    return total / (time.monotonic() - t0)


def _peek_rate(daemon: Daemon, method: str, block: int, total: int, **where: Any) -> float | None:
    key = "offset" if method == "domain.block_peek" else "start"
    with daemon.client() as c:
        t0 = time.monotonic()
        done = 0
        try:
            while done < total:
                out = c.call(method, **where, **{key: done, "size": block})
                got = len(base64.b64decode(out["data"] if isinstance(out, dict) else out))
                if got != block:
                    raise RuntimeError(f"{method} returned {got} bytes, asked {block}")
                done += got
        except MethodNotFoundError:
            return None
        return total / (time.monotonic() - t0)


def _allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    total = (16 if args.quick else 64) * MB
    block = 1 * MB
    out: list[dict[str, Any]] = []
    with temp_root("bench-peek-") as d:
        sim = SimHost(d / "host")
        (name,) = sim.define_files(1, prefix="p")
        image = sim.root / f"var/vm/{name}/disk0.img"
        with open(image, "r+b") as f:  # some data, some holes
            f.truncate(4 * total)
            for off in range(0, 4 * total, 8 * MB):
                f.seek(off)
                f.write(os.urandom(MB))
        daemon = Daemon(sim, d / "daemon.out")
        try:
            daemon.wait_socket()
            wait_for(
                "guest running", lambda: daemon.call("domain.list")[0]["state"] == "running", 60
            )
            vmm = sim.host.path(f"/dev/vmm/{name}")
            wait_for("the VM", lambda: os.path.exists(vmm), 30)  # bhyve has set it up
            dd_disk = _dd(str(image), block, total)
            ours = _peek_rate(daemon, "domain.block_peek", block, total, name=name, disk="vda")
            out.append(
                report(
                    "peek.block_rate",
                    None if ours is None else ours / MB,
                    "MB/s",
                    peer=dd_disk / MB,
                    peer_name="dd",
                    lower_is_better=False,
                    target=">= 0.8x",
                )
            )
            if ours is None:
                print(f"  (dd of the same file: {dd_disk / MB:.0f} MB/s)")
            mem_total = min(total, 32 * MB)
            dd_mem = _dd(vmm, block, mem_total)
            ours = _peek_rate(daemon, "domain.memory_peek", block, mem_total, name=name)
            out.append(
                report(
                    "peek.memory_rate",
                    None if ours is None else ours / MB,
                    "MB/s",
                    peer=dd_mem / MB,
                    peer_name="dd",
                    lower_is_better=False,
                    target=">= 0.8x",
                )
            )
            if ours is None:
                print(f"  (dd of the same memory file: {dd_mem / MB:.0f} MB/s)")
            # Copy: cp --sparse=always, then the daemon's block copy of the same image.
            dest = d / "cp-copy.img"
            t0 = time.monotonic()
            subprocess.run(["cp", "--sparse=always", str(image), str(dest)], check=True)
            cp_rate = os.path.getsize(image) / (time.monotonic() - t0)
            cp_alloc = _allocated(str(dest))
            ours_rate = None
            ours_alloc = None
            try:
                target = f"/var/vm/{name}/copy.img"
                t0 = time.monotonic()
                daemon.call("domain.block_copy", name=name, disk="vda", dest=target, wait=True)
                ours_rate = os.path.getsize(image) / (time.monotonic() - t0)
                ours_alloc = _allocated(sim.host.path(target))
            except MethodNotFoundError:
                pass
            out.append(
                report(
                    "copy.rate",
                    None if ours_rate is None else ours_rate / MB,
                    "MB/s",
                    peer=cp_rate / MB,
                    peer_name="cp --sparse=always",
                    lower_is_better=False,
                    target=">= 0.9x",
                )
            )
            if ours_rate is None:
                print(
                    f"  (cp --sparse=always of the same image: {cp_rate / MB:.0f} MB/s, "
                    f"{cp_alloc / MB:.0f} MB allocated of {os.path.getsize(image) / MB:.0f})"
                )
            else:
                out.append(
                    report(
                        "copy.allocated",
                        (ours_alloc or 0) / MB,
                        "MB",
                        peer=cp_alloc / MB,
                        peer_name="cp --sparse=always",
                        target="<= 1x",
                    )
                )
        finally:
            daemon.stop()
            sim.teardown()
    return out


if __name__ == "__main__":
    main()
