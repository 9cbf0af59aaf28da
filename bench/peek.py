"""Peek and copy throughput against the physical limits: ``dd`` and ``cp --sparse=always``.

- What ``bhyvesupctl blockpeek`` and ``memory-peek -o FILE`` do: ``domain.block_peek`` /
  ``domain.memory_peek`` with ``to_fd`` (the client hands over its output file and the
  daemon writes the range into it) versus ``dd bs=1M of=FILE`` of the same source (the
  image, ``/dev/vmm/NAME``). The targets are on these rows.
- A streamed read (``stream=true``: the raw bytes through the socket after the reply, for
  clients that want them in hand) versus ``dd`` of the same source, both into /dev/null.
- ``domain.block_copy`` of a sparse image versus ``cp --sparse=always`` of it, and how
  sparse each copy is; a durable copy (``sync: true``) versus ``cp`` then ``sync FILE``.

A daemon that does not have a method answers "method not found": the figure is then
printed as unavailable (with the peer's figure), and lights up once the method lands.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Daemon, SimHost, report, temp_root, wait_for
from supervisor.rpc.errors import MethodNotFoundError

MB = 1 << 20
#: Runs of each throughput measurement; the best counts.
ROUNDS = 5
#: The events that end a job.
_JOB_ENDS = frozenset({"job.completed", "job.failed", "job.cancelled"})


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


def _peek_rate(daemon: Daemon, method: str, total: int, **where: Any) -> float | None:
    """One streamed call of *total* bytes (``stream: true``) into /dev/null, as dd writes."""
    key = "offset" if method == "domain.block_peek" else "start"
    with daemon.client() as c, open(os.devnull, "wb") as sink:
        t0 = time.monotonic()
        try:
            reply = c.call_stream(method, sink, **where, **{key: 0, "size": total})
        except MethodNotFoundError:
            return None
        if reply["size"] != total:
            raise RuntimeError(f"{method} announced {reply['size']} bytes, asked {total}")
        return total / (time.monotonic() - t0)


def _dd_to_file(path: str, dest: Path, block: int, total: int) -> float:
    """``dd`` of *total* bytes of *path* into a new file *dest* (what a user copying a
    range out by hand runs)."""
    dest.unlink(missing_ok=True)
    t0 = time.monotonic()
    r = subprocess.run(
        ["dd", f"if={path}", f"of={dest}", f"bs={block}", f"count={total // block}"],
        check=False,
        capture_output=True,
    )
    if r.returncode != 0:
        raise RuntimeError(f"dd of {path} failed: {r.stderr.decode().strip()}")
    return total / (time.monotonic() - t0)


def _peek_to_file_rate(
    daemon: Daemon, method: str, dest: Path, total: int, **where: Any
) -> float | None:
    """One call of *total* bytes written by the daemon into a new file *dest* that the
    client opened and handed over (``to_fd``), as ``bhyvesupctl memory-peek -o`` and
    ``blockpeek`` do."""
    key = "offset" if method == "domain.block_peek" else "start"
    dest.unlink(missing_ok=True)
    with daemon.client() as c, open(dest, "wb") as sink:
        t0 = time.monotonic()
        try:
            reply = c.call_to_fd(method, sink.fileno(), **where, **{key: 0, "size": total})
        except MethodNotFoundError:
            return None
        if reply["written"] != total:
            raise RuntimeError(f"{method} wrote {reply['written']} bytes, asked {total}")
        return total / (time.monotonic() - t0)


def _best_pair(
    peer: Callable[[], float], ours: Callable[[], float | None]
) -> tuple[float, float | None]:
    """The best of :data:`ROUNDS` rates of each, a round of one then of the other; ours is
    None when the method is missing."""
    peer_rates: list[float] = []
    our_rates: list[float | None] = []
    for _ in range(ROUNDS):
        peer_rates.append(peer())
        our_rates.append(ours())
    best = None if None in our_rates else max(r for r in our_rates if r is not None)
    return max(peer_rates), best


def _allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    total = (64 if args.quick else 256) * MB
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
            # Each side's best of ROUNDS, alternating: a run this short is at the
            # mercy of whatever else the machine does for a few milliseconds.
            dd_disk, ours = _best_pair(
                lambda: _dd(str(image), block, total),
                lambda: _peek_rate(daemon, "domain.block_peek", total, name=name, disk="vda"),
            )
            out.append(
                report(
                    "peek.block_rate",
                    None if ours is None else ours / MB,
                    "MB/s",
                    peer=dd_disk / MB,
                    peer_name="dd",
                    lower_is_better=False,
                )
            )
            if ours is None:
                print(f"  (dd of the same file: {dd_disk / MB:.0f} MB/s)")
            mem_total = min(total, 64 * MB)  # the guest's RAM
            dd_mem, ours = _best_pair(
                lambda: _dd(vmm, block, mem_total),
                lambda: _peek_rate(daemon, "domain.memory_peek", mem_total, name=name),
            )
            out.append(
                report(
                    "peek.memory_rate",
                    None if ours is None else ours / MB,
                    "MB/s",
                    peer=dd_mem / MB,
                    peer_name="dd",
                    lower_is_better=False,
                )
            )
            if ours is None:
                print(f"  (dd of the same memory file: {dd_mem / MB:.0f} MB/s)")

            # What a user gets out: the CLI hands the daemon its output file and the
            # daemon writes into it, set against dd writing the same file. (Into
            # /dev/null a write would cost the daemon nothing at all, so a file it is.)
            dest = d / "peek-out.bin"
            for label, method, where, source, size in (
                ("peek.block_to_file_rate", "domain.block_peek", {"disk": "vda"}, image, total),
                ("peek.memory_to_file_rate", "domain.memory_peek", {}, Path(vmm), mem_total),
            ):
                dd_file, ours = _best_pair(
                    lambda src=source, n=size: _dd_to_file(str(src), dest, block, n),
                    lambda m=method, w=where, n=size: _peek_to_file_rate(
                        daemon, m, dest, n, name=name, **w
                    ),
                )
                out.append(
                    report(
                        label,
                        None if ours is None else ours / MB,
                        "MB/s",
                        peer=dd_file / MB,
                        peer_name="dd of=FILE",
                        lower_is_better=False,
                        target=">= 0.8x",
                    )
                )
            dest.unlink(missing_ok=True)

            # Copy: cp --sparse=always, then the daemon's block copy of the same image;
            # each the best of ROUNDS. A plain copy is left to the page cache, as cp's
            # is; a durable one (sync: true, as a copy that is pivoted to always is)
            # ends with fsyncs, and is set against cp followed by sync(1) of the copy,
            # the same work.
            def cp_once(sync: bool) -> tuple[float, int]:
                dest = d / "cp-copy.img"
                t0 = time.monotonic()
                subprocess.run(["cp", "--sparse=always", str(image), str(dest)], check=True)
                if sync:
                    subprocess.run(["sync", str(dest)], check=True)
                rate = os.path.getsize(image) / (time.monotonic() - t0)
                alloc = _allocated(str(dest))
                dest.unlink()
                return rate, alloc

            def ours_once(i: int, sync: bool) -> tuple[float, int]:
                # Waits for the job's end as `bhyvesupctl blockcopy --wait` does, on the
                # event: polling job.get every few milliseconds measured the polling (a
                # request per poll in the daemon while it copies) more than the copy.
                target = f"/var/vm/{name}/copy{i}.img"
                with daemon.client() as c:
                    c.call("events.subscribe")
                    t0 = time.monotonic()
                    job = c.call("domain.block_copy", name=name, disk="vda", dest=target, sync=sync)
                    end = None
                    for note in c.notifications(timeout=120):
                        ev = note.params
                        if ev.get("id") == job["id"] and ev.get("type") in _JOB_ENDS:
                            end = ev
                            break
                    elapsed = time.monotonic() - t0
                if end is None or end["type"] != "job.completed":
                    raise RuntimeError(f"block copy did not complete: {end}")
                alloc = _allocated(sim.host.path(target))
                os.unlink(sim.host.path(target))
                return os.path.getsize(image) / elapsed, alloc

            # Rounds alternate between cp and the daemon, so that both see the same
            # machine: on a shared one the load changes from second to second.
            cp_runs: list[tuple[float, int]] = []
            cp_sync_runs: list[float] = []
            ours_runs: list[tuple[float, int]] = []
            ours_sync_runs: list[float] = []
            # A running guest's plain file (not on ZFS) cannot be copied consistently.
            daemon.call("domain.destroy", name=name)
            have_copy = True
            for i in range(ROUNDS):
                cp_runs.append(cp_once(False))
                cp_sync_runs.append(cp_once(True)[0])
                if have_copy:
                    try:
                        ours_runs.append(ours_once(i, False))
                        ours_sync_runs.append(ours_once(i, True)[0])
                    except MethodNotFoundError:
                        have_copy = False
            cp_rate, cp_alloc = max(cp_runs)
            cp_sync_rate = max(cp_sync_runs)
            ours_rate, ours_alloc = max(ours_runs) if have_copy else (None, None)
            ours_sync_rate = max(ours_sync_runs) if have_copy else None
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
                        "copy.rate_vs_cp_sync",
                        None if ours_sync_rate is None else ours_sync_rate / MB,
                        "MB/s",
                        peer=cp_sync_rate / MB,
                        peer_name="cp --sparse=always; sync FILE",
                        lower_is_better=False,
                    )
                )
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
