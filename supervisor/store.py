"""Persistent guest definitions: one libvirt domain XML file per guest.

``/usr/local/etc/bhyvesupd/domains/NAME.xml`` is the single source of truth for a guest's
configuration, the supervisor's own policy included (in ``<metadata>``). Writes are
atomic (temporary file, fsync, rename, fsync of the directory): a crash or a full disk
leaves the old definition or the new one, never half of either.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs

from supervisor._fsutil import write_atomic
from supervisor.domain.model import Domain
from supervisor.errors import HostNotReadyError, SupervisorError
from supervisor.host import Host
from supervisor.log import get_logger

log = get_logger("bhyvesupd.store")

SUFFIX = ".xml"


@attrs.frozen
class LoadProblem:
    """A definition file that could not be loaded, and why."""

    path: str
    error: str


@attrs.define
class DefinitionStore:
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
        for entry in entries:
            if not entry.endswith(SUFFIX) or entry.startswith("."):
                continue
            path = os.path.join(self.local_dir, entry)
            try:
                with open(path, "rb") as f:
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
        return domains, problems

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
