"""The daemon's configuration: ``/usr/local/etc/bhyvesupd.toml``.

Every key has a FreeBSD default, so an empty file (or none) is a valid configuration.
Unknown keys are errors that name the key: a typo must not silently fall back to a
default. Paths are FreeBSD paths; the :class:`~supervisor.host.Host` maps them.
"""

from __future__ import annotations

import grp
import os
import typing
from typing import Any, Literal, TypeVar

import attrs

from supervisor import host as _host
from supervisor._record import Record
from supervisor.errors import ConfigError


@attrs.frozen(repr=False)
class DaemonSection(Record):
    socket: str = _host.SOCKET_PATH
    #: Permission bits of the control socket, as an octal string.
    socket_mode: str = "0660"
    #: Group owning the socket (a name or a gid); its members get read-write access.
    #: Empty: root only.
    socket_group: str = ""
    #: Members of this group get read-only access. They must be able to connect: give
    #: the socket mode 0666 (peer credentials still refuse everyone else).
    readonly_group: str = ""
    log_file: str = f"{_host.LOG_DIR}/bhyvesupd.log"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: What stopping the daemon does to running guests: ``keep`` them running (restart,
    #: upgrade: they are re-adopted) or ``shutdown`` them (host shutdown).
    on_stop: Literal["keep", "shutdown"] = "keep"
    #: Budget in seconds for shutting every guest down in parallel at host shutdown.
    #: Keep it below rc.conf's rcshutdown_timeout (90 s by default).
    shutdown_budget: float = 80.0


@attrs.frozen(repr=False)
class GuestsSection(Record):
    domains_dir: str = _host.DOMAINS_DIR
    run_dir: str = _host.RUN_DIR
    log_dir: str = _host.LOG_DIR
    firmware_dir: str = _host.FIRMWARE_DIR
    #: Size of a console log before it is rotated, and how many old ones to keep.
    console_log_max: int = 1 << 20
    console_log_keep: int = 3
    #: Bytes of console output each guest keeps in memory for ``console.tail``.
    console_ring: int = 256 * 1024
    #: Requests queued per guest before callers get "busy".
    mailbox_size: int = 32


@attrs.frozen(repr=False)
class NetworkSection(Record):
    #: Where NAT network definitions (libvirt network XML) are kept.
    networks_dir: str = _host.NETWORKS_DIR
    #: The firewall that does NAT for networks: ``pf`` (rules in an anchor of the
    #: daemon's own) or ``ipfw`` (in-kernel NAT, rules in a set of the daemon's own).
    firewall: Literal["pf", "ipfw"] = "pf"
    #: The pf anchor the daemon loads its rules under (one sub-anchor per network);
    #: pf.conf calls it with ``nat-anchor``/``rdr-anchor``/``anchor "NAME/*"``.
    pf_anchor: str = "bhyvesupd"
    #: ipfw: the rule set holding the daemon's rules, and the first rule number and NAT
    #: instance it uses (each network takes the next ten rule numbers and one instance).
    ipfw_set: int = 7
    ipfw_rule_base: int = 10000
    ipfw_nat_base: int = 100
    #: The interface NAT goes out of when a network's ``<forward dev=...>`` names none.
    external_interface: str = ""


@attrs.frozen(repr=False)
class Config(Record):
    daemon: DaemonSection = attrs.field(factory=DaemonSection)
    guests: GuestsSection = attrs.field(factory=GuestsSection)
    network: NetworkSection = attrs.field(factory=NetworkSection)

    @property
    def socket_mode(self) -> int:
        return int(self.daemon.socket_mode, 8)


_S = TypeVar("_S")


def _structure(raw: Any, cls: type[_S], where: str) -> _S:
    """*raw* (a TOML table) as the attrs class *cls*: every key known, every value of its
    field's type. Errors name the key as ``SECTION.KEY``; *where* is the table's own."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {raw!r}", field=where)
    prefix = f"{where}." if where else ""
    fields = attrs.fields_dict(cls)  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"{key}: unknown key (known: {', '.join(fields)})", field=key)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        key = prefix + name
        kind = hints[name]
        if attrs.has(kind):
            values[name] = _structure(value, kind, key)
        else:
            values[name] = _check_value(value, kind, key)
    return cls(**values)


def _check_value(value: Any, kind: Any, key: str) -> Any:
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ConfigError(
                f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}", field=key
            )
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {_KIND_NAMES[kind]}, got {value!r}", field=key)


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number"}


def parse_config(text: str, *, source: str = "<config>") -> Config:
    """Parse the TOML *text* of a configuration file.

    Raises:
        ConfigError: the TOML is malformed, a key is unknown or a value has the wrong
            type; the message names the key.
    """
    import tomllib  # here: a daemon started without a configuration file never needs it

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        config = _structure(raw, Config, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}", field=exc.field) from None
    try:
        mode = config.socket_mode
    except ValueError:
        raise ConfigError(
            f"{source}: daemon.socket_mode: not an octal mode: {config.daemon.socket_mode!r}",
            field="daemon.socket_mode",
        ) from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"{source}: daemon.socket_mode: out of range", field="daemon.socket_mode")
    for key in ("socket_group", "readonly_group"):
        name = getattr(config.daemon, key)
        if name and not _group_exists(name):
            raise ConfigError(
                f"{source}: daemon.{key}: no such group {name!r}", field=f"daemon.{key}"
            )
    return config


def load_config(path: str | None) -> Config:
    """Read the configuration at *path* (a local path); a missing default file is empty."""
    if path is None:
        return Config()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    return parse_config(text, source=path)


def _group_exists(name: str) -> bool:
    if name.isdigit():
        return True
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def group_id(name: str) -> int | None:
    """The gid of group *name* (a name, or a number as chown(8) takes it), or None for
    the empty name."""
    if not name:
        return None
    if name.isdigit():
        return int(name)
    return grp.getgrnam(name).gr_gid


def default_config_path() -> str:
    return os.environ.get("BHYVESUPD_CONFIG", _host.CONFIG_FILE)
