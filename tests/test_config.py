from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import Config, load_config, parse_config
from supervisor.errors import ConfigError


def test_empty_config_is_freebsd_defaults() -> None:
    config = parse_config("")
    assert config == Config()
    assert config.daemon.socket == "/var/run/bhyvesupd/bhyvesupd.sock"
    assert config.socket_mode == 0o660
    assert config.guests.domains_dir == "/usr/local/etc/bhyvesupd/domains"


def test_values_are_read() -> None:
    config = parse_config(
        '[daemon]\non_stop = "shutdown"\nshutdown_budget = 30\nsocket_group = "root"\n'
        "[guests]\nconsole_ring = 4096\n"
    )
    assert config.daemon.on_stop == "shutdown"
    assert config.daemon.shutdown_budget == 30.0
    assert config.guests.console_ring == 4096


def test_a_whole_number_is_taken_where_a_number_is_wanted() -> None:
    config = parse_config("[daemon]\nshutdown_budget = 45\n")
    assert config.daemon.shutdown_budget == 45.0
    assert isinstance(config.daemon.shutdown_budget, float)


def test_the_error_carries_the_key_for_clients() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[guests]\nmailbox_size = 'many'\n")
    assert info.value.field == "guests.mailbox_size"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[daemon]\nsockett = 'x'\n", "sockett"),
        ("[daemon]\non_stop = 'explode'\n", "on_stop"),
        ("[guests]\nconsole_ring = 'big'\n", "console_ring"),
        ("[daemon]\nsocket_mode = '99'\n", "socket_mode"),
        ("[daemon]\nsocket_group = 'no-such-group-xyz'\n", "socket_group"),
        ("[daemon\n", "bhyvesupd.toml"),
        ("[guests]\nconsole_ring = true\n", "guests.console_ring: expected an integer"),
        ("[network]\nipfw_set = 2.5\n", "network.ipfw_set: expected an integer"),
        ("[daemons]\nsocket = 'x'\n", "daemons: unknown key"),
        ("daemon = 'x'\n", "daemon: expected a table"),
    ],
)
def test_bad_config_names_the_key(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_config(text, source="bhyvesupd.toml")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(str(tmp_path / "nope.toml"))
    assert load_config(None) == Config()
