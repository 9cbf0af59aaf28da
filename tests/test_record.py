"""The shared ``__repr__`` of the project's attrs classes prints what attrs' own would."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from supervisor._record import Record
from supervisor.actors import lifecycle as lc
from supervisor.domain import model


def _pair() -> tuple[type[Any], type[Any]]:
    # The same fields twice: with attrs' generated repr, and with Record's.
    @attrs.define
    class Theirs:
        name: str
        hidden: str = attrs.field(default="secret", repr=False)
        sizes: list[int] = attrs.field(factory=list, repr=lambda v: f"<{len(v)} sizes>")
        parent: object = None
        late: int = attrs.field(init=False)

    @attrs.define(repr=False)
    class Ours(Record):
        name: str
        hidden: str = attrs.field(default="secret", repr=False)
        sizes: list[int] = attrs.field(factory=list, repr=lambda v: f"<{len(v)} sizes>")
        parent: object = None
        late: int = attrs.field(init=False)

    return Theirs, Ours


@pytest.mark.parametrize(
    "build",
    [
        lambda cls: cls("web1"),
        lambda cls: cls("db'1", sizes=[1, 2], parent={"k": (1, 2.5)}),
        lambda cls: cls("nested", parent=cls("inner")),
    ],
)
def test_record_repr_is_attrs_repr(build: Any) -> None:
    theirs, ours = _pair()
    expected = repr(build(theirs)).replace("Theirs(", "Ours(")
    assert repr(build(ours)) == expected
    assert "secret" not in expected


def test_a_record_inside_itself_prints_as_dots_not_a_recursion_error() -> None:
    theirs, ours = _pair()
    a, b = theirs("loop"), ours("loop")
    a.parent, b.parent = a, b
    assert repr(b) == repr(a).replace("Theirs(", "Ours(")
    assert repr(b) == "Ours(name='loop', sizes=<0 sizes>, parent=..., late=NOTHING)"


def test_the_projects_classes_print_their_fields() -> None:
    assert repr(lc.ExitStatus(code=3)) == "ExitStatus(code=3, signal=None)"
    assert repr(lc.Launched(pid=42)) == "Launched(pid=42)"
    disk = model.Disk(target="sda", source="/vm/web1.img")
    assert repr(disk).startswith("Disk(target='sda', source='/vm/web1.img', type='file', ")
