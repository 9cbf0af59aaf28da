from __future__ import annotations

from pathlib import Path

from supervisor.config import Config, parse_config

SAMPLE = Path(__file__).resolve().parent.parent / "etc" / "bhyvesupd.toml.sample"


def test_the_sample_configuration_is_valid_and_shows_the_defaults() -> None:
    assert parse_config(SAMPLE.read_text(), source=str(SAMPLE)) == Config()
