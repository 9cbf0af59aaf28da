"""Loaded on first use: package attributes (a module ``__getattr__``, PEP 562) and
modules (importlib's lazy loader)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for *package* that imports ``where[name]`` when *name*
    is first asked for and returns that module's attribute of the same name.

    Declare the names under ``TYPE_CHECKING`` as well, so type checkers see them.
    """

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__


def lazy_module(name: str) -> ModuleType:
    """Module *name*, executed when one of its attributes is first read.

    What the daemon's API areas import for their methods only (the bhyvectl and ps
    parsers, the host checks, the disk and copy code) is not needed to start the
    guests, and importing it all was a millisecond-scale share of every start of the
    daemon. importlib's :class:`~importlib.util.LazyLoader` defers the module's
    execution; an import of it elsewhere gets the same module object.

    Declare the module under ``TYPE_CHECKING`` with a plain import as well, so type
    checkers see it.
    """
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        # As an import does: `import a.b` then `a.b.f()` finds it.
        setattr(sys.modules[parent], child, module)
    return module
