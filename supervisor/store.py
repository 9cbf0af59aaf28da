"""Persistent guest definitions: one libvirt domain XML file per guest.

``/usr/local/etc/bhyvesupd/domains/NAME.xml`` is the single source of truth for a guest's
configuration, the supervisor's own policy included (in ``<metadata>``). Writes are
atomic (temporary file, fsync, rename, fsync of the directory): a crash or a full disk
leaves the old definition or the new one, never half of either.

Parsed definitions are kept in a cache (``/var/db/bhyvesupd/domains.cache``), the way
Python keeps bytecode next to source: each entry is valid for one exact version of its
file (inode, size, modification and change times in nanoseconds) and for one version
of the parser (a stamp the store's owner gives). Reading 500 definitions from it costs
a fifth of parsing them, which is most of what a host's boot spends before its first
guest starts. The cache never decides anything: a missing, unreadable, foreign or
stale cache only means parsing, a file that changed is parsed again, a file that
fails to parse is never cached, and deleting the cache is always safe.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
from collections.abc import Callable
from typing import Any

import attrs

from supervisor import __version__
from supervisor._fsutil import write_atomic
from supervisor._record import Record
from supervisor.domain.model import Domain
from supervisor.errors import HostNotReadyError, SupervisorError
from supervisor.host import DB_DIR, Host
from supervisor.log import get_logger

log = get_logger("bhyvesupd.store")

SUFFIX = ".xml"

#: The layout of the cache file; a file of another layout is not read.
_CACHE_FORMAT = 1

#: What identifies one version of a definition file.
_FileKey = tuple[int, int, int, int, int]


#: Where the daemon keeps its cache of parsed definitions (FreeBSD path).
CACHE_FILE = f"{DB_DIR}/domains.cache"


def source_stamp(*modules: str) -> str:
    """A version stamp for the code of the modules named *modules*: the package's
    version, Python's, and each module file's size and modification time (what
    Python's own bytecode cache compares), so that a cache written by other code is not
    used.

    The modules are found, not imported: a daemon whose definitions all come from the
    cache never needs the XML parser (nor lxml) at start-up.
    """
    parts = [__version__, sys.version]
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
            st = os.stat(spec.origin if spec is not None and spec.origin else "")
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        except (OSError, ImportError):
            parts.append(name)
    return "|".join(parts)


def _file_key(st: os.stat_result) -> _FileKey:
    # The change time too: an edit that keeps the size and puts the modification time
    # back (touch -r, some editors' backups) still changes it.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@attrs.frozen(repr=False)
class LoadProblem(Record):
    """A definition file that could not be loaded, and why."""

    path: str
    error: str


@attrs.define(repr=False)
class DefinitionStore(Record):
    """The directory of guest definitions.

    Args:
        host: maps the FreeBSD directory to this machine.
        directory: the FreeBSD path of the directory.
        parse: XML text → :class:`Domain` (raises :class:`SupervisorError` on bad input).
        format: :class:`Domain` → XML text.
    """

    host: Host
    directory: str
    parse: Callable[[bytes], Domain]
    format: Callable[[Domain], str]
    #: Local path of the cache of parsed definitions; None: no cache.
    cache_path: str | None = None
    #: The parser's version: a cache written under another stamp is not used.
    stamp: str = ""

    @property
    def local_dir(self) -> str:
        return self.host.path(self.directory)

    def path_of(self, name: str) -> str:
        return os.path.join(self.local_dir, name + SUFFIX)

    def load_all(self) -> tuple[dict[str, Domain], list[LoadProblem]]:
        """Every definition in the directory, plus the files that could not be read.

        A file whose guest name differs from its file name is a problem, not a guest:
        two files must never claim one name.
        """
        domains: dict[str, Domain] = {}
        problems: list[LoadProblem] = []
        try:
            entries = sorted(os.listdir(self.local_dir))
        except FileNotFoundError:
            return domains, problems
        cached = self._read_cache()
        fresh: dict[str, tuple[_FileKey, Domain]] = {}
        for entry in entries:
            if not entry.endswith(SUFFIX) or entry.startswith("."):
                continue
            path = os.path.join(self.local_dir, entry)
            try:
                key = _file_key(os.stat(path))
                hit = cached.get(entry)
                if hit is not None and hit[0] == key:
                    domain = hit[1]
                else:
                    with open(path, "rb") as f:
                        # The key of what is read, taken before reading it: a change
                        # made while it is read gives the file a newer key than the
                        # cached entry, which is then parsed again next time.
                        key = _file_key(os.fstat(f.fileno()))
                        domain = self.parse(f.read())
            except (OSError, SupervisorError) as exc:
                problems.append(LoadProblem(path, str(exc)))
                continue
            if domain.name + SUFFIX != entry:
                problems.append(
                    LoadProblem(path, f"defines guest {domain.name!r}; expected {entry[:-4]!r}")
                )
                continue
            domains[domain.name] = domain
            fresh[entry] = (key, domain)
        if fresh.keys() != cached.keys() or any(cached[e][0] != fresh[e][0] for e in fresh):
            self._write_cache(fresh)
        return domains, problems

    def _read_cache(self) -> dict[str, tuple[_FileKey, Domain]]:
        """The cache's entries, or none when it cannot be trusted or used."""
        if self.cache_path is None:
            return {}
        try:
            with open(self.cache_path, "rb") as f:
                st = os.fstat(f.fileno())
                # Unpickling runs code named in the file: only a file the daemon's own
                # user wrote and nobody else can change is read.
                if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                    log.warning(
                        "definition_cache_ignored",
                        path=self.cache_path,
                        reason="not owned by the daemon's user, or writable by others",
                    )
                    return {}
                data: Any = pickle.load(f)
        except FileNotFoundError:
            return {}
        except Exception as exc:  # a truncated or foreign file: parse instead
            log.warning("definition_cache_unreadable", path=self.cache_path, error=repr(exc))
            return {}
        if (
            not isinstance(data, dict)
            or data.get("format") != _CACHE_FORMAT
            or data.get("stamp") != self.stamp
            or not isinstance(data.get("entries"), dict)
        ):
            return {}
        entries: dict[str, tuple[_FileKey, Domain]] = {}
        for entry, value in data["entries"].items():
            if (
                isinstance(entry, str)
                and isinstance(value, tuple)
                and len(value) == 2
                and isinstance(value[1], Domain)
            ):
                entries[entry] = value
        return entries

    def _write_cache(self, entries: dict[str, tuple[_FileKey, Domain]]) -> None:
        if self.cache_path is None:
            return
        data = {"format": _CACHE_FORMAT, "stamp": self.stamp, "entries": entries}
        try:
            blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # a definition the cache cannot hold: still loaded
            log.warning("definition_cache_unwritable", path=self.cache_path, error=repr(exc))
            return
        try:
            # Not durable: a cache lost with a power failure is only parsed again.
            write_atomic(self.cache_path, blob, mode=0o600, durable=False)
        except OSError as exc:
            log.warning("definition_cache_unwritable", path=self.cache_path, error=exc.strerror)

    def save(self, domain: Domain) -> str:
        """Write *domain*'s definition atomically; returns the local path."""
        path = self.path_of(domain.name)
        try:
            write_atomic(path, self.format(domain).encode("utf-8"), mode=0o600)
        except OSError as exc:
            # A full or read-only filesystem is the host's condition, not a bug: say
            # which file and why; the old definition (if any) is still in place.
            where = self.host.unpath(path)
            raise HostNotReadyError(
                f"cannot write the definition of {domain.name!r} to {where}: "
                f"{exc.strerror or exc}; nothing was changed",
                data={"path": where, "errno": exc.errno},
            ) from None
        return path

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.path_of(name))
        except FileNotFoundError:
            pass
