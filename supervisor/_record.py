"""One ``__repr__`` for the project's attrs classes.

attrs compiles a ``__repr__`` for every class it builds, and compiling it is about
two fifths of what building a class costs; the daemon builds over a hundred of them as
it imports, before it can start a guest. The classes declare ``repr=False`` and
inherit :class:`Record`'s, which prints what attrs' would: ``Name(field=value, ...)``,
without the fields declared ``repr=False``, through a field's own repr callable if it
has one, and ``...`` for an object met again inside itself.
"""

from __future__ import annotations

import reprlib
from typing import Any

_UNSET = object()


class Record:
    """Base class of the project's attrs classes (declared with ``repr=False``)."""

    __slots__ = ()

    @reprlib.recursive_repr("...")
    def __repr__(self) -> str:
        cls = type(self)
        fields: tuple[Any, ...] = getattr(cls, "__attrs_attrs__", ())
        parts = []
        for field in fields:
            how = field.repr
            if how is False:
                continue
            value = getattr(self, field.name, _UNSET)
            if value is _UNSET:
                text = "NOTHING"
            elif how is True:
                text = repr(value)
            else:
                text = how(value)
            parts.append(f"{field.name}={text}")
        return f"{cls.__qualname__.rsplit('>.', 1)[-1]}({', '.join(parts)})"
