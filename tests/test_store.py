"""The definitions directory and its cache of parsed definitions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor import store as store_module
from supervisor.domain.model import Domain
from supervisor.domain.xml import format_domain_xml, parse_domain_xml
from supervisor.host import Host
from supervisor.store import CACHE_FILE, DefinitionStore

DOMAINS = "/usr/local/etc/bhyvesupd/domains"


def _xml(name: str, memory_mib: int = 256) -> str:
    return f"""<domain type='bhyve'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <os><type>hvm</type></os>
</domain>
"""


class Counting:
    """parse_domain_xml, counting the documents it parses."""

    def __init__(self) -> None:
        self.parsed: list[str] = []

    def __call__(self, data: bytes) -> Domain:
        domain = parse_domain_xml(data)
        self.parsed.append(domain.name)
        return domain


def _store(host: Host, parse: Counting, stamp: str = "v1") -> DefinitionStore:
    return DefinitionStore(
        host, DOMAINS, parse, format_domain_xml, cache_path=host.path(CACHE_FILE), stamp=stamp
    )


@pytest.fixture
def host(tmp_path: Path) -> Host:
    host = Host(root=str(tmp_path))
    os.makedirs(host.path(DOMAINS))
    for name in ("web1", "web2", "db1"):
        Path(host.path(f"{DOMAINS}/{name}.xml")).write_text(_xml(name))
    return host


def test_unchanged_definitions_are_read_from_the_cache(host: Host) -> None:
    first = Counting()
    domains, problems = _store(host, first).load_all()
    assert sorted(first.parsed) == ["db1", "web1", "web2"]
    assert not problems
    again = Counting()
    cached, problems = _store(host, again).load_all()
    assert again.parsed == []
    assert cached == domains
    assert not problems
    # Even a definition without <uuid> keeps the one post-parse gave it.
    assert cached["web1"].uuid == domains["web1"].uuid is not None


def test_a_changed_definition_is_parsed_again_even_with_its_size_and_time_put_back(
    host: Host,
) -> None:
    _store(host, Counting()).load_all()
    path = host.path(f"{DOMAINS}/web1.xml")
    st = os.stat(path)
    Path(path).write_text(_xml("web1", memory_mib=512))  # same length: 256 -> 512
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    parse = Counting()
    domains, _ = _store(host, parse).load_all()
    assert parse.parsed == ["web1"]
    assert domains["web1"].memory_kib == 512 * 1024


def test_added_and_removed_files_are_followed(host: Host) -> None:
    _store(host, Counting()).load_all()
    os.unlink(host.path(f"{DOMAINS}/web2.xml"))
    Path(host.path(f"{DOMAINS}/app1.xml")).write_text(_xml("app1"))
    parse = Counting()
    domains, _ = _store(host, parse).load_all()
    assert parse.parsed == ["app1"]
    assert sorted(domains) == ["app1", "db1", "web1"]


def test_a_cache_of_another_parser_version_is_not_used(host: Host) -> None:
    _store(host, Counting(), stamp="v1").load_all()
    parse = Counting()
    _store(host, parse, stamp="v2").load_all()
    assert sorted(parse.parsed) == ["db1", "web1", "web2"]


@pytest.mark.parametrize("content", [b"", b"not a pickle", b"\x80\x05K\x01."])
def test_a_damaged_cache_means_parsing_and_is_replaced(host: Host, content: bytes) -> None:
    _store(host, Counting()).load_all()
    Path(host.path(CACHE_FILE)).write_bytes(content)
    parse = Counting()
    domains, problems = _store(host, parse).load_all()
    assert sorted(parse.parsed) == ["db1", "web1", "web2"]
    assert sorted(domains) == ["db1", "web1", "web2"]
    assert not problems
    again = Counting()
    _store(host, again).load_all()
    assert again.parsed == []


def test_a_cache_others_could_have_written_is_not_read(host: Host) -> None:
    _store(host, Counting()).load_all()
    os.chmod(host.path(CACHE_FILE), 0o666)
    parse = Counting()
    _store(host, parse).load_all()
    assert sorted(parse.parsed) == ["db1", "web1", "web2"]
    # Replaced by one of the daemon's own, private to it.
    assert os.stat(host.path(CACHE_FILE)).st_mode & 0o777 == 0o600


def test_a_bad_definition_is_reported_every_time_and_never_cached(host: Host) -> None:
    bad = _xml("bad").replace("<memory unit='MiB'>256</memory>", "")
    Path(host.path(f"{DOMAINS}/bad.xml")).write_text(bad)
    for _ in range(2):
        parse = Counting()
        domains, problems = _store(host, parse).load_all()
        assert [Path(p.path).name for p in problems] == ["bad.xml"]
        assert problems[0].error == "memory: is required"
        assert "bad" not in domains


def test_an_unwritable_cache_costs_only_the_cache(host: Host) -> None:
    os.makedirs(os.path.dirname(host.path(CACHE_FILE)))
    os.makedirs(host.path(CACHE_FILE))  # a directory where the file should go
    parse = Counting()
    domains, problems = _store(host, parse).load_all()
    assert sorted(domains) == ["db1", "web1", "web2"]
    assert not problems


def test_definitions_the_cache_cannot_hold_are_still_loaded(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot(*args: object, **kwargs: object) -> bytes:
        raise TypeError("cannot pickle 'lxml.etree._Element' object")

    monkeypatch.setattr(store_module.pickle, "dumps", cannot)
    domains, problems = _store(host, Counting()).load_all()
    assert sorted(domains) == ["db1", "web1", "web2"]
    assert not problems
    assert not os.path.exists(host.path(CACHE_FILE))


def test_without_a_cache_path_every_load_parses(host: Host) -> None:
    store = DefinitionStore(host, DOMAINS, Counting(), format_domain_xml)
    for _ in range(2):
        store.parse = parse = Counting()
        store.load_all()
        assert len(parse.parsed) == 3
    assert not os.path.exists(host.path(CACHE_FILE))


def test_the_code_stamp_changes_with_a_module_file_and_does_not_import_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    (tmp_path / "stampmod_parser.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = store_module.source_stamp("stampmod_parser", "supervisor.domain.model")
    assert "stampmod_parser" not in sys.modules
    assert store_module.source_stamp("stampmod_parser", "supervisor.domain.model") == before
    (tmp_path / "stampmod_parser.py").write_text("raise RuntimeError('imported, v2')\n")
    assert store_module.source_stamp("stampmod_parser", "supervisor.domain.model") != before
    # A module that is not there still gives a stamp (its name), so the cache is
    # written and read by the same daemon.
    assert "no_such_module_here" in store_module.source_stamp("no_such_module_here")
