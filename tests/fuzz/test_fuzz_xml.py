"""Fuzzing the domain XML parser: no crash, every refusal a SupervisorError that says why.

Inputs are random bytes, and mutations of real definitions (the shipped examples and the
libvirt corpus when present): elements dropped or duplicated, attribute values and text
replaced by random strings. Whatever comes in, :func:`parse_domain_xml` returns a Domain
or raises :class:`~supervisor.errors.InvalidValueError` (which InvalidXMLError is); a
value error on a well-formed document names the field.
"""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from supervisor.domain.model import Domain
from supervisor.domain.xml import format_domain_xml, parse_domain_xml
from supervisor.errors import InvalidValueError

REPO = Path(__file__).resolve().parent.parent.parent
CORPUS = REPO.parent / "shared" / "corpus" / "libvirt-bhyve"


def _seeds() -> list[bytes]:
    seeds = [p.read_bytes() for p in sorted((REPO / "etc" / "examples").glob("*.xml"))]
    if CORPUS.is_dir():
        seeds += [p.read_bytes() for p in sorted(CORPUS.rglob("*.xml"))[:60]]
    return seeds


SEEDS = _seeds()

nasty_text = st.one_of(
    # Only what XML can carry: control characters cannot be put in a document at all.
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12),
    st.sampled_from(
        [
            "",
            "-1",
            "0",
            "99999999999999999999",
            "yes",
            "no",
            "on",
            "1.5",
            "0x10",
            "../x",
            "/dev/null",
            "a b",
            "é",
            "KiB",
            "virtio",
            "none",
            "pflash",
            "rom",
        ]
    ),
)


def _mutate(doc: bytes, rnd: random.Random, texts: list[str]) -> bytes:
    try:
        root = etree.fromstring(doc, etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError:
        return doc
    elements = [e for e in root.iter() if isinstance(e.tag, str)]
    for text in texts:
        el = rnd.choice(elements)
        what = rnd.randrange(4)
        if what == 0 and el is not root and el.getparent() is not None:
            el.getparent().remove(el)
            elements = [e for e in root.iter() if isinstance(e.tag, str)]
        elif what == 1 and el.attrib:
            key = rnd.choice(sorted(el.attrib))
            el.set(key, text)
        elif what == 2 and el is not root and el.getparent() is not None:
            el.getparent().append(etree.fromstring(etree.tostring(el)))
        else:
            el.text = text
    return etree.tostring(root)


def _check(doc: bytes, well_formed: bool) -> None:
    try:
        domain = parse_domain_xml(doc)
    except InvalidValueError as exc:
        assert str(exc)
        if well_formed and type(exc).__name__ != "InvalidXMLError":
            assert exc.field, f"no field named for {exc!r}"
        return
    assert isinstance(domain, Domain)
    # What parsed must format and parse back to the same guest.
    assert parse_domain_xml(format_domain_xml(domain)) == domain


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, len(SEEDS) - 1),
    st.randoms(use_true_random=False),
    st.lists(nasty_text, min_size=1, max_size=4),
)
def test_mutated_definitions_parse_or_name_the_field(
    index: int, rnd: random.Random, texts: list[str]
) -> None:
    _check(_mutate(SEEDS[index], rnd, texts), well_formed=True)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_random_bytes_are_refused_cleanly(data: bytes) -> None:
    _check(data, well_formed=False)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, len(SEEDS) - 1), st.integers(0, 10_000), st.binary(max_size=8))
def test_definitions_cut_or_spliced_anywhere_are_refused_cleanly(
    index: int, at: int, junk: bytes
) -> None:
    doc = SEEDS[index]
    at %= len(doc) + 1
    _check(doc[:at] + junk + doc[at + len(junk) :], well_formed=False)
