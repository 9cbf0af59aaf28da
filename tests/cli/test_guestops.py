"""bhyvesupctl's seed-call verbs: argument parsing (the daemon side is tested end to end)."""

from __future__ import annotations

import argparse

import pytest

from supervisor.cli.guestops import parse_size
from supervisor.cli.main import build_parser


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("4096", 4096),
        ("0x1000", 0x1000),
        ("0xFFE00000", 0xFFE00000),
        ("1M", 1 << 20),
        ("3m", 3 << 20),
        ("2G", 2 << 30),
        ("16KiB", 16 << 10),
        ("64k", 64 << 10),
    ],
)
def test_sizes_and_addresses(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "x", "-1", "1.5M", "0xZZ"])
def test_bad_sizes(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(bad)


def test_verbs_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["memory-peek", "web1", "--start", "0x1000", "--size", "2M", "-o", "out.bin"]
    )
    assert (args.name, args.start, args.size, args.output) == ("web1", 0x1000, 2 << 20, "out.bin")
    assert parser.parse_args(["inject-nmi", "web1"]).vcpu == 0
    assert parser.parse_args(["cpu-stats", "web1", "--vcpu", "1", "--json"]).json
    assert parser.parse_args(["maxvcpus"]).name is None
    assert parser.parse_args(["cpu-models"]).arch == "x86_64"
    assert parser.parse_args(["domtime", "web1", "--set", "1700000000"]).set == 1700000000


@pytest.mark.parametrize(
    "argv",
    [
        ["memory-peek", "web1", "--start", "0", "-o", "f"],  # no --size
        ["domtime", "web1", "--set", "1", "--now"],  # one or the other
        ["inject-nmi", "web1", "--vcpu", "-1"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
