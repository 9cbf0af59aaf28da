"""Parsers of ``zfs(8)`` scripted output, and the commands that produce it.

Only two output shapes are read, both stable across FreeBSD's OpenZFS 2.x and the old
zfs-fuse 0.7 (whose ``zfs list`` has no ``-p``, while its ``zfs get`` has):

``zfs get -H -p -o name,property,value PROPS NAME...``
    one ``NAME<TAB>PROPERTY<TAB>VALUE`` line per pair; sizes exact bytes; ``-`` where
    the property does not apply (``volsize`` of a filesystem, ``origin`` of a
    non-clone).
``zfs list -H -o name [-t snapshot] [-r] NAME``
    one name per line.

Pure functions: no process is run here.
"""

from __future__ import annotations

import re

from supervisor.errors import InvalidValueError

#: The dataset name grammar (zfs_namecheck.c): components of letters, digits and
#: ``_-.:``, joined by ``/``; a snapshot adds ``@`` and one more such component.
_COMPONENT = r"[A-Za-z0-9_.:-]+"
_DATASET_RE = re.compile(rf"{_COMPONENT}(/{_COMPONENT})*")
_SNAPSHOT_RE = re.compile(rf"{_COMPONENT}(/{_COMPONENT})*@{_COMPONENT}")
#: ZFS's limit on a full name (ZFS_MAX_DATASET_NAME_LEN - 1).
MAX_NAME = 255


def check_dataset(name: str, field: str = "dataset") -> str:
    """*name* if it is a valid dataset or volume name.

    Raises:
        InvalidValueError: not a dataset name (the message names *field*).
    """
    if len(name) > MAX_NAME or not _DATASET_RE.fullmatch(name) or name.startswith(("-", ".")):
        raise InvalidValueError(f"{field}: not a ZFS dataset name, got {name!r}", field=field)
    return name


def check_snapshot_component(name: str, field: str = "snapshot") -> str:
    """*name* if it can follow ``@`` in a snapshot name."""
    if not re.fullmatch(_COMPONENT, name) or name.startswith("-"):
        raise InvalidValueError(f"{field}: not a ZFS snapshot name, got {name!r}", field=field)
    return name


def is_snapshot(name: str) -> bool:
    return bool(_SNAPSHOT_RE.fullmatch(name))


def get_argv(names: list[str], props: list[str]) -> list[str]:
    """``zfs get`` for exact values of *props* of *names*."""
    return ["zfs", "get", "-H", "-p", "-o", "name,property,value", ",".join(props), *names]


def parse_get(text: str) -> dict[str, dict[str, str]]:
    """``zfs get -H -p -o name,property,value`` output: name → property → value.

    Raises:
        ValueError: a line without three TAB-separated fields.
    """
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"zfs get: unexpected line {line!r}")
        name, prop, value = parts
        out.setdefault(name, {})[prop] = value
    return out


def size(value: str | None) -> int | None:
    """An exact size from ``-p`` output; ``None`` for ``-`` (not available).

    Raises:
        ValueError: neither an integer nor ``-``.
    """
    if value is None or value in ("-", ""):
        return None
    if not value.isdigit():
        raise ValueError(f"zfs: expected an exact size (-p), got {value!r}")
    return int(value)


def parse_names(text: str) -> list[str]:
    """``zfs list -H -o name`` output."""
    return [line for line in text.splitlines() if line]


def volume_path(dataset: str) -> str:
    """The FreeBSD device node of zvol *dataset*."""
    return f"/dev/zvol/{dataset}"


def dataset_of_device(path: str) -> str | None:
    """The zvol behind ``/dev/zvol/POOL/NAME``, or ``None`` for another path."""
    prefix = "/dev/zvol/"
    if not path.startswith(prefix):
        return None
    return path[len(prefix) :]
