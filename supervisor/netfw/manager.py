"""Networks at run time: definitions, start/stop, NAT rules and a supervised dnsmasq.

Theory of operation
===================

Definitions are libvirt network XML files in ``networks_dir`` (written atomically).
Starting a network:

1. its bridge: created when missing (``ifconfig bridgeN create`` or ``ifconfig bridge
   create`` + ``name``), described ``bhyvesupd network NAME``, given the gateway address
   and brought UP; a bridge of that name the daemon did not create is refused;
2. for NAT, ``net.inet.ip.forwarding=1`` and the firewall rules (pf: the network's own
   anchor; ipfw: the daemon's rule set rebuilt for every active NAT network);
3. a dnsmasq bound to the bridge, run by a task of the daemon that restarts it (with a
   capped back-off) whenever it dies while the network is active.

The set of active networks is kept in ``RUN_DIR/networks.json``: a restarted daemon
brings them back (the bridges, which stayed up, are adopted as they are). Stopping a
network is refused while guests' taps are on its bridge; otherwise it undoes the three
steps in reverse. dnsmasq stops with the daemon (leases are kept in its lease file).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from supervisor import host as _host
from supervisor._fsutil import write_atomic
from supervisor._record import Record
from supervisor.config import NetworkSection
from supervisor.errors import (
    GuestExistsError,
    HostNotReadyError,
    InvalidStateError,
    InvalidValueError,
    SupervisorError,
)
from supervisor.host import Host
from supervisor.log import get_logger
from supervisor.netfw import dhcp, rules
from supervisor.netfw.ifparse import IfInfo, parse_ifconfig
from supervisor.netfw.network import Network, format_network_xml, parse_network_xml
from supervisor.vmm.hostexec import resolve_argv, run_tool, tool_env

if TYPE_CHECKING:
    from supervisor.domain.model import Domain

log = get_logger("bhyvesupd.network")

DB_DIR = _host.DB_DIR
STATE_FILE = "networks.json"
#: Restart back-off for a dying dnsmasq: first delay and cap, in seconds.
DHCP_BACKOFF = (0.5, 30.0)


class NetworkNotFoundError(InvalidValueError):
    """No network has that name."""


def bridge_description(net: Network) -> str:
    return f"bhyvesupd network {net.name}"


@attrs.define(eq=False, repr=False)
class _Dhcp(Record):
    cancel: trio.CancelScope
    pid: int | None = None
    restarts: int = 0
    done: trio.Event = attrs.field(factory=trio.Event)


class NetworkManager:
    """The daemon's networks.

    Args:
        host: the host.
        config: the ``[network]`` section.
        run_dir, log_dir: the daemon's runtime and log directories (FreeBSD paths).
        db_dir: where lease files and static address tables are kept.
    """

    def __init__(
        self,
        host: Host,
        config: NetworkSection,
        run_dir: str,
        log_dir: str,
        *,
        db_dir: str = DB_DIR,
    ) -> None:
        self.host = host
        self.db_dir = db_dir
        self.config = config
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.networks: dict[str, Network] = {}
        self.active: set[str] = set()
        self._dhcp: dict[str, _Dhcp] = {}
        self._nursery: trio.Nursery | None = None
        self._ipfw_nat_ids: list[int] = []
        self._lock = trio.Lock()
        self._restore: list[str] = []

    # -- paths ------------------------------------------------------------------------

    def _def_path(self, name: str) -> str:
        return self.host.path(f"{self.config.networks_dir}/{name}.xml")

    def lease_file(self, name: str) -> str:
        return f"{self.db_dir}/{name}.leases"

    def _static_file(self, name: str) -> str:
        return f"{self.db_dir}/{name}.static.json"

    def _hosts_file(self, name: str) -> str:
        return f"{self.run_dir}/net-{name}.hosts"

    def _conf_file(self, name: str) -> str:
        return f"{self.run_dir}/net-{name}.dnsmasq.conf"

    def _pid_file(self, name: str) -> str:
        return f"{self.run_dir}/net-{name}.dnsmasq.pid"

    # -- definitions ------------------------------------------------------------------

    def load(self) -> list[str]:
        """Read every definition; returns the problems (one line each)."""
        problems = []
        directory = self.host.path(self.config.networks_dir)
        os.makedirs(directory, exist_ok=True)
        for entry in sorted(os.listdir(directory)):
            if not entry.endswith(".xml"):
                continue
            path = os.path.join(directory, entry)
            try:
                with open(path, "rb") as f:
                    net = parse_network_xml(f.read())
            except (OSError, SupervisorError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            self.networks[net.name] = net
        try:
            with open(self.host.path(f"{self.run_dir}/{STATE_FILE}"), encoding="utf-8") as f:
                was_active = json.load(f).get("active", [])
        except (OSError, ValueError):
            was_active = []
        self._restore = [n for n in was_active if n in self.networks]
        return problems

    def _save_state(self) -> None:
        write_atomic(
            self.host.path(f"{self.run_dir}/{STATE_FILE}"),
            (json.dumps({"active": sorted(self.active)}) + "\n").encode(),
        )

    def get(self, name: str) -> Network:
        try:
            return self.networks[name]
        except KeyError:
            raise NetworkNotFoundError(f"no network named {name!r}", field="name") from None

    def define(self, xml: str) -> Network:
        """Define or replace a network (a change takes effect at its next start)."""
        net = parse_network_xml(xml)
        for other in self.networks.values():
            if other.name != net.name and other.bridge == net.bridge:
                raise GuestExistsError(
                    f"bridge.name: network {other.name!r} already uses bridge {net.bridge}",
                    field="bridge.name",
                )
            if other.name != net.name and other.subnet.overlaps(net.subnet):
                raise GuestExistsError(
                    f"ip.address: {net.subnet} overlaps network {other.name!r} ({other.subnet})",
                    field="ip.address",
                )
        write_atomic(self._def_path(net.name), format_network_xml(net).encode())
        self.networks[net.name] = net
        return net

    def undefine(self, name: str) -> None:
        self.get(name)
        if name in self.active:
            raise InvalidStateError(f"network {name} is active; stop it first", field="name")
        os.unlink(self._def_path(name))
        del self.networks[name]

    def info(self, name: str) -> dict[str, Any]:
        net = self.get(name)
        d = self._dhcp.get(name)
        return {
            "name": net.name,
            "uuid": net.uuid,
            "bridge": net.bridge,
            "forward": net.forward,
            "address": str(net.address),
            "subnet": str(net.subnet),
            "dhcp_range": [str(a) for a in net.dhcp_range] if net.dhcp_range else None,
            "active": name in self.active,
            "dhcp_pid": d.pid if d else None,
            "dhcp_restarts": d.restarts if d else 0,
        }

    # -- the launch hook's side ---------------------------------------------------------

    def bridge_for(self, network: str, field: str) -> str:
        """The bridge of an active network (for a guest's NIC)."""
        net = self.networks.get(network)
        if net is None:
            raise HostNotReadyError(f"{field}: no network named {network!r}", field=field)
        if network not in self.active:
            raise HostNotReadyError(
                f"{field}: network {network} is not active (bhyvesupctl net-start {network})",
                field=field,
            )
        return net.bridge

    async def ensure_lease(self, network: str, mac: str, guest: str) -> None:
        """Give *mac* a static address on *network* and tell its dnsmasq."""
        net = self.get(network)
        path = self.host.path(self._static_file(network))
        known = _read_static(path)
        previous = {m: v["ip"] for m, v in known.items()}
        wanted = [(m, v["guest"]) for m, v in known.items() if m != mac] + [(mac, guest)]
        assigned = dhcp.assign_static(net, wanted, previous)
        table = {m: {"ip": assigned[m], "guest": g} for m, g in wanted}
        if table != known:
            write_atomic(path, (json.dumps(table, indent=1, sort_keys=True) + "\n").encode())
        self._write_hosts(net, table)
        d = self._dhcp.get(network)
        if d is not None and d.pid is not None:
            try:
                os.kill(d.pid, signal.SIGHUP)  # dnsmasq re-reads dhcp-hostsfile
            except ProcessLookupError:
                pass

    def _write_hosts(self, net: Network, table: dict[str, dict[str, str]] | None = None) -> None:
        if table is None:
            table = _read_static(self.host.path(self._static_file(net.name)))
        entries = [(h.mac, h.ip, h.name) for h in net.hosts]
        fixed = {h.mac for h in net.hosts}
        entries += [
            (m, ipaddress.IPv4Address(v["ip"]), v["guest"])
            for m, v in sorted(table.items())
            if m not in fixed
        ]
        write_atomic(self.host.path(self._hosts_file(net.name)), dhcp.hosts_file(entries).encode())

    def leases(self, network: str) -> list[dhcp.Lease]:
        """The current leases of *network*'s dnsmasq."""
        self.get(network)
        try:
            with open(self.host.path(self.lease_file(network)), encoding="utf-8") as f:
                return dhcp.parse_leases(f.read())
        except OSError:
            return []

    def interface_addresses(self, domain: Domain, taps: Mapping[str, str]) -> list[dict[str, Any]]:
        """Each network NIC of *domain* with the addresses its network's leases give its
        MAC (libvirt's ``domifaddr --source lease``); *taps* maps NIC index to tap."""
        out = []
        for i, nic in enumerate(domain.interfaces):
            if nic.type != "network" or nic.network is None or nic.mac is None:
                continue
            field = f"devices.interface[{i}].source.network"
            if nic.network not in self.networks:
                raise InvalidValueError(f"{field}: no network {nic.network!r}", field=field)
            prefix = self.networks[nic.network].subnet.prefixlen
            out.append(
                {
                    "name": nic.target_dev or taps.get(str(i)),
                    "hwaddr": nic.mac,
                    "network": nic.network,
                    "addrs": [
                        {"type": "ipv4", "addr": x.ip, "prefix": prefix}
                        for x in self.leases(nic.network)
                        if x.mac == nic.mac
                    ],
                }
            )
        return out

    # -- start / stop -----------------------------------------------------------------

    async def _ifconfig(self) -> dict[str, IfInfo]:
        r = await run_tool(self.host, ["ifconfig"], check=True, timeout=30)
        return parse_ifconfig(r.stdout)

    async def _run(self, argv: list[str], stdin: bytes | None = None) -> str:
        r = await run_tool(self.host, argv, check=True, timeout=30, stdin=stdin)
        return r.stdout

    def _ext_if(self, net: Network) -> str:
        ext = net.forward_dev or self.config.external_interface
        if not ext:
            raise HostNotReadyError(
                "forward.dev: name the interface NAT goes out of in <forward dev='...'/> "
                "or [network] external_interface",
                field="forward.dev",
            )
        return ext

    async def _bridge_up(self, net: Network) -> bool:
        """Create or adopt the bridge; whether it was created now."""
        ifs = await self._ifconfig()
        info = ifs.get(net.bridge)
        if info is None:
            if re.fullmatch(r"bridge\d+", net.bridge):
                await self._run(["ifconfig", net.bridge, "create"])
            else:
                made = (await self._run(["ifconfig", "bridge", "create"])).strip()
                await self._run(["ifconfig", made, "name", net.bridge])
            await self._run(
                [
                    "ifconfig", net.bridge, "description", bridge_description(net),
                    "inet", str(net.address), "up",
                ]
            )  # fmt: skip
            log.info("bridge_created", network=net.name, bridge=net.bridge)
            return True
        if info.description != bridge_description(net):
            raise HostNotReadyError(
                f"bridge.name: {net.bridge} exists and is not this network's bridge "
                f"(description {info.description!r}); choose another name",
                field="bridge.name",
            )
        if str(net.gateway) not in info.inet:
            await self._run(["ifconfig", net.bridge, "inet", str(net.address), "alias"])
        if not info.up:
            await self._run(["ifconfig", net.bridge, "up"])
        return False

    async def _apply_ipfw(self) -> None:
        nat = [
            (self.networks[n], self._ext_if(self.networks[n]))
            for n in sorted(self.active)
            if self.networks[n].forward == "nat"
        ]
        c = self.config
        cmds = rules.ipfw_commands(
            nat, rule_set=c.ipfw_set, rule_base=c.ipfw_rule_base, nat_base=c.ipfw_nat_base
        )
        for argv in cmds + rules.ipfw_stale_nat(self._ipfw_nat_ids, cmds):
            await self._run(argv)
        self._ipfw_nat_ids = [int(a[3]) for a in cmds if a[2] == "nat"]

    async def start(self, name: str) -> dict[str, Any]:
        """Bring network *name* up (idempotent: an active network is re-checked)."""
        async with self._lock:
            net = self.get(name)
            ext = self._ext_if(net) if net.forward == "nat" else None
            created = await self._bridge_up(net)
            self.active.add(name)
            try:
                if ext is not None:
                    await self._run(["sysctl", "net.inet.ip.forwarding=1"])
                    if self.config.firewall == "pf":
                        await self._run(
                            rules.pf_load_argv(self.config.pf_anchor, net),
                            stdin=rules.pf_rules(net, ext).encode(),
                        )
                    else:
                        await self._apply_ipfw()
                self._write_hosts(net)
                self._start_dhcp(net)
            except BaseException:
                self.active.discard(name)
                if created:
                    # Leave the host as it was: a half-started network keeps nothing.
                    with trio.CancelScope(shield=True):
                        try:
                            await self._run(["ifconfig", net.bridge, "destroy"])
                        except SupervisorError as exc:
                            log.warning("bridge_not_removed", bridge=net.bridge, error=str(exc))
                raise
            self._save_state()
            log.info("network_started", network=name, bridge=net.bridge)
            return self.info(name)

    async def stop(self, name: str) -> dict[str, Any]:
        """Take network *name* down; refused while guests are attached."""
        async with self._lock:
            net = self.get(name)
            if name not in self.active:
                raise InvalidStateError(f"network {name} is not active", field="name")
            ifs = await self._ifconfig()
            info = ifs.get(net.bridge)
            if info is not None and info.members:
                raise InvalidStateError(
                    f"network {name}: guests are attached to {net.bridge} "
                    f"({', '.join(info.members)}); stop them first",
                    field="name",
                )
            await self._stop_dhcp(name)
            self.active.discard(name)
            if net.forward == "nat":
                if self.config.firewall == "pf":
                    await self._run(rules.pf_flush_argv(self.config.pf_anchor, net))
                else:
                    await self._apply_ipfw()
            if info is not None and info.description == bridge_description(net):
                await self._run(["ifconfig", net.bridge, "destroy"])
            self._save_state()
            log.info("network_stopped", network=name)
            return self.info(name)

    # -- dnsmasq ----------------------------------------------------------------------

    def start_dhcp(self, name: str) -> None:
        """Run (and keep running) the dnsmasq of network *name*; :meth:`start` does this
        after the bridge and the rules are in place."""
        self._write_hosts(self.get(name))
        self._start_dhcp(self.get(name))

    def dhcp_pid(self, name: str) -> int | None:
        """The pid of network *name*'s dnsmasq while it runs."""
        d = self._dhcp.get(name)
        return d.pid if d else None

    def _start_dhcp(self, net: Network) -> None:
        if net.name in self._dhcp or (net.dhcp_range is None and not net.hosts):
            return
        assert self._nursery is not None
        d = _Dhcp(trio.CancelScope())
        self._dhcp[net.name] = d
        conf = dhcp.dnsmasq_conf(
            net,
            lease_file=self.lease_file(net.name),
            hosts_file=self._hosts_file(net.name),
            pid_file=self._pid_file(net.name),
        )
        os.makedirs(self.host.path(self.db_dir), exist_ok=True)
        write_atomic(self.host.path(self._conf_file(net.name)), conf.encode())
        self._nursery.start_soon(self._supervise_dhcp, net, d)

    async def _stop_dhcp(self, name: str) -> None:
        d = self._dhcp.pop(name, None)
        if d is None:
            return
        d.cancel.cancel()
        await d.done.wait()

    def _kill_stale(self, name: str) -> None:
        try:
            with open(self.host.path(self._pid_file(name)), encoding="ascii") as f:
                pid = int(f.read().strip())
            os.kill(pid, signal.SIGTERM)
            log.info("stale_dnsmasq_stopped", network=name, pid=pid)
        except (OSError, ValueError):
            pass

    async def _supervise_dhcp(self, net: Network, d: _Dhcp) -> None:
        delay = DHCP_BACKOFF[0]
        argv = ["dnsmasq", "--keep-in-foreground", f"--conf-file={self._conf_file(net.name)}"]
        log_path = self.host.path(f"{self.log_dir}/net-{net.name}.dnsmasq.log")
        try:
            with d.cancel:
                self._kill_stale(net.name)
                while True:
                    out = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                    try:
                        proc = await trio.lowlevel.open_process(
                            resolve_argv(self.host, argv),
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=out,
                            env=tool_env(self.host),
                            start_new_session=True,
                        )
                    except OSError as exc:
                        log.warning("dnsmasq_not_started", network=net.name, error=str(exc))
                        proc = None
                    finally:
                        os.close(out)
                    if proc is not None:
                        d.pid = proc.pid
                        log.info("dnsmasq_started", network=net.name, pid=proc.pid)
                        started = trio.current_time()
                        try:
                            code = await proc.wait()
                        finally:
                            if proc.returncode is None:
                                await _terminate(proc)
                        d.pid = None
                        if trio.current_time() - started > 60:
                            delay = DHCP_BACKOFF[0]
                        log.warning(
                            "dnsmasq_exited", network=net.name, status=code, restart_in=delay
                        )
                    d.restarts += 1
                    await trio.sleep(delay)
                    delay = min(delay * 2, DHCP_BACKOFF[1])
        finally:
            d.done.set()

    # -- running ----------------------------------------------------------------------

    async def run(
        self,
        *,
        restore: bool = True,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Own the dnsmasq tasks; bring back the networks that were active (*restore*)."""
        for problem in self.load():
            log.error("network_definition_unreadable", problem=problem)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name in self._restore if restore else ():
                try:
                    await self.start(name)
                except SupervisorError as exc:
                    log.warning("network_not_restored", network=name, error=str(exc))
            task_status.started()
            await trio.sleep_forever()


def _read_static(path: str) -> dict[str, dict[str, str]]:
    """The static address table (MAC → {ip, guest}); empty when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


async def _terminate(proc: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        proc.terminate()
        with trio.move_on_after(5):
            await proc.wait()
            return
        proc.kill()
        await proc.wait()
