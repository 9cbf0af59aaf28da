"""The FreeBSD port skeleton and the newsyslog entry agree with the project they ship."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from supervisor import __version__

ROOT = Path(__file__).resolve().parents[2]
PORT = ROOT / "packaging" / "freebsd"
NEWSYSLOG = ROOT / "etc" / "newsyslog.conf.d" / "bhyvesupd.conf"

#: PyPI names whose FreeBSD port is not simply py-NAME (lower case, '_' as '-').
PORT_NAMES: dict[str, str] = {}


def make_vars(text: str) -> dict[str, str]:
    """VAR=value assignments of a port Makefile, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = {}
    for line in joined.splitlines():
        m = re.match(r"([A-Z_]+)[+?]?=\s*(.*)", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def pyproject_runtime() -> dict[str, str]:
    """PyPI name -> the minimum version pyproject.toml asks for."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    out = {}
    for spec in data["project"]["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)(,.*)?", spec)
        assert m, f"dependency {spec!r} has no minimum version"
        out[m.group(1)] = m.group(2)
    return out


def test_the_port_requires_every_runtime_dependency_at_its_minimum_version() -> None:
    run = make_vars((PORT / "Makefile").read_text())["RUN_DEPENDS"].split()
    ported = {}
    for dep in run:
        m = re.fullmatch(
            r"\$\{PYTHON_PKGNAMEPREFIX\}([a-z0-9-]+)>=([0-9.]+):[a-z]+/py-\1@\$\{PY_FLAVOR\}", dep
        )
        assert m, f"RUN_DEPENDS entry {dep!r} is not a python port dependency"
        ported[m.group(1)] = m.group(2)
    wanted = {
        PORT_NAMES.get(name, name.lower().replace("_", "-")): version
        for name, version in pyproject_runtime().items()
    }
    assert ported == wanted


def test_the_port_version_python_and_service_match_the_project() -> None:
    mk = make_vars((PORT / "Makefile").read_text())
    assert mk["DISTVERSION"] == __version__
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["requires-python"] == ">=3.11"
    assert mk["USES"] == "python:3.11+"
    assert mk["USE_RC_SUBR"] == "bhyvesupd"
    assert (PORT / "files" / "bhyvesupd.in").read_text() == (
        ROOT / "rc.d" / "bhyvesupd"
    ).read_text()
    assert (PORT / "pkg-descr").read_text().strip()


def test_what_the_port_installs_is_in_the_source_distribution() -> None:
    makefile = (PORT / "Makefile").read_text()
    sources = set(re.findall(r"\$\{WRKSRC\}/(\S+)", makefile))
    assert sources
    manifest = (ROOT / "MANIFEST.in").read_text()
    for source in sources:
        matches = list(ROOT.glob(source))
        assert matches, f"the port installs {source}, which the project lacks"
        top = source.split("/")[0]
        assert top in manifest or source in manifest, f"{source} is not in MANIFEST.in"


def test_the_install_message_says_what_to_put_in_rc_conf_and_loader_conf() -> None:
    message = (PORT / "files" / "pkg-message.in").read_text()
    for needle in ('vmm_load="YES"', 'nmdm_load="YES"', "bhyvesupd_enable", "rcshutdown_timeout"):
        assert needle in message


def newsyslog_entries() -> list[list[str]]:
    return [
        line.split()
        for line in NEWSYSLOG.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_newsyslog_rotates_the_daemon_logs_but_never_the_console_logs() -> None:
    entries = newsyslog_entries()
    patterns = [e[0] for e in entries]
    assert "/var/log/bhyvesupd/bhyvesupd.log" in patterns
    for console in ("/var/log/bhyvesupd/web.console.log", "/var/log/bhyvesupd/web.console.log.1"):
        assert not any(fnmatch.fnmatch(console, p) for p in patterns), console
    for e in entries:
        name, owner, mode, count, size, when, flags = e[:7]
        assert name.startswith("/var/log/bhyvesupd/")
        assert owner == "root:wheel"
        assert re.fullmatch(r"[0-7]{3}", mode)
        assert count.isdigit()
        assert size == "*" or size.isdigit()
        assert when == "*" or when.startswith(("@", "$")) or when.isdigit()
        assert set(flags) <= set("BCDGJNpRTUXYZ-")
        assert ("G" in flags) == any(c in name for c in "*?[")


def test_newsyslog_signals_daemon8_not_bhyvesupd() -> None:
    rc = (ROOT / "rc.d" / "bhyvesupd").read_text()
    supervisor_pidfile = re.search(r'^pidfile="([^"]+)"', rc, re.M)
    assert supervisor_pidfile
    expected = supervisor_pidfile.group(1).replace("${name}", "bhyvesupd")
    for e in newsyslog_entries():
        if "N" in e[6]:
            assert len(e) == 7  # no signal at all
        else:
            assert e[7] == expected  # daemon(8) reopens its -o file on SIGHUP (-H)
            assert e[8] == "1"
