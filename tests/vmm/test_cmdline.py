"""Commands as text: splitting, libvirt's rendering and our shell rendering."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import InvalidArgvError
from supervisor.vmm.cmdline import render_libvirt, render_shell, split_command_text

# -- splitting -------------------------------------------------------------------------


def test_continuations_join_and_each_line_is_a_command() -> None:
    text = "/usr/sbin/bhyveload \\\n-m 214 \\\n-d /tmp/a.img bhyve\n/usr/sbin/bhyve \\\n-c 1 vm\n"
    assert split_command_text(text) == [
        ["/usr/sbin/bhyveload", "-m", "214", "-d", "/tmp/a.img", "bhyve"],
        ["/usr/sbin/bhyve", "-c", "1", "vm"],
    ]


def test_blank_lines_are_dropped_and_blanks_collapse() -> None:
    assert split_command_text("\n\n  a   b\t c  \n \t\n\nd\n") == [["a", "b", "c"], ["d"]]


def test_crlf_continuations() -> None:
    assert split_command_text("a \\\r\n-b\r\nc\r\n") == [["a", "-b"], ["c"]]


def test_libvirt_quoting() -> None:
    text = "bhyve -s '2:0,ahci,hd:/tmp/my disk.img' \"x y\" '' vm"
    assert split_command_text(text) == [
        ["bhyve", "-s", "2:0,ahci,hd:/tmp/my disk.img", "x y", "", "vm"]
    ]


def test_single_quotes_keep_every_character() -> None:
    assert split_command_text(r"""a '\n "x" $y'""") == [["a", r'\n "x" $y']]


def test_posix_rules_win_where_libvirts_differ() -> None:
    # a backslash outside quotes escapes the next character
    assert split_command_text(r"a /my\ disk.img") == [["a", "/my disk.img"]]
    # inside double quotes it escapes a double quote and a backslash
    assert split_command_text(r'a "say \"hi\" \\ \n"') == [["a", r'say "hi" \ \n']]
    # quotes in the middle of a word and text after a closing quote stay in the word
    assert split_command_text("a x'y z'w") == [["a", "xy zw"]]
    # libvirt's own rendering of a quote inside an argument reads back
    assert split_command_text("a 'it'\\''s'") == [["a", "it's"]]


def test_a_newline_inside_quotes_belongs_to_the_word() -> None:
    assert split_command_text("a 'x\ny' b\nc") == [["a", "x\ny", "b"], ["c"]]


def test_an_open_quote_is_an_error_naming_its_line() -> None:
    with pytest.raises(InvalidArgvError, match="line 2: the ' quote"):
        split_command_text("a b\nc 'd e\n")
    with pytest.raises(InvalidArgvError, match='line 1: the " quote'):
        split_command_text('a "b')


def test_empty_text_has_no_commands() -> None:
    assert split_command_text("") == []
    assert split_command_text("\n \n") == []


# -- libvirt's rendering ---------------------------------------------------------------


def test_render_libvirt_breaks_before_options_and_the_trailing_name() -> None:
    assert render_libvirt(["/usr/sbin/bhyve", "-c", "1", "-u", "-m", "214", "vm"]) == (
        "bhyve \\\n-c 1 \\\n-u \\\n-m 214 \\\nvm"
    )


def test_render_libvirt_keeps_a_name_right_after_a_flag_on_the_flags_line() -> None:
    # libvirt cannot tell a flag from an option taking a value
    assert render_libvirt(["bhyve", "-c", "1", "-u", "vm"]) == "bhyve \\\n-c 1 \\\n-u vm"


def test_render_libvirt_without_options_keeps_every_argument_on_its_own_line() -> None:
    assert render_libvirt(["/usr/local/bin/fizz", "a", "b"]) == "fizz \\\na \\\nb"
    assert render_libvirt(["/x/dummy"]) == "dummy"


def test_render_libvirt_keeps_positional_arguments_between_options_on_the_line() -> None:
    # "b" follows an option value and more options come later: it stays on the line
    assert render_libvirt(["p", "-a", "1", "b", "-c", "d"]) == "p \\\n-a 1 b \\\n-c d"


@pytest.mark.parametrize(
    ("arg", "rendered"),
    [
        ("plain-arg_1,x=y:z/", "plain-arg_1,x=y:z/"),
        ("", "''"),
        ("a b", "'a b'"),
        ("it's", "'it'\\''s'"),
        ("<device.map>", "'<device.map>'"),
        ("a\\b", "'a\\b'"),
        ("$HOME", "'$HOME'"),
        ("x~", "'x~'"),
        ("%@+=", "%@+="),
    ],
)
def test_render_libvirt_escaping(arg: str, rendered: str) -> None:
    assert render_libvirt(["p", "-o", arg]) == f"p \\\n-o {rendered}"


def test_render_refuses_an_empty_command() -> None:
    with pytest.raises(InvalidArgvError):
        render_libvirt([])
    with pytest.raises(InvalidArgvError):
        render_shell([])


def _libvirt_rendered_files(corpus: Path) -> list[Path]:
    data = corpus / "bhyvexml2argvdata"
    return sorted([*data.glob("*.args"), *data.glob("*.ldargs")])


def test_render_libvirt_reproduces_every_xml2argv_file(corpus: Path) -> None:
    files = _libvirt_rendered_files(corpus)
    assert len(files) == 100
    mismatched = []
    for path in files:
        text = path.read_text()
        (argv,) = split_command_text(text)
        if render_libvirt(argv) + "\n" != text:
            mismatched.append(path.name)
    assert mismatched == []


# -- our shell rendering ---------------------------------------------------------------


def test_render_shell_is_one_shell_line() -> None:
    argv = ["/usr/sbin/bhyve", "-s", "2,virtio-blk,/vm/my disk.img", "-U", "", "vm0"]
    line = render_shell(argv)
    assert "\n" not in line
    assert shlex.split(line) == argv


_args = st.lists(st.text(st.characters(blacklist_categories=("Cs",))), min_size=1, max_size=6)


@given(st.lists(_args, min_size=1, max_size=3))
def test_shell_rendering_reads_back(commands: list[list[str]]) -> None:
    text = "\n".join(render_shell(argv) for argv in commands)
    assert split_command_text(text) == commands


@given(_args)
def test_libvirt_rendering_reads_back(argv: list[str]) -> None:
    argv = ["prog", *argv[1:]]
    assert split_command_text(render_libvirt(argv)) == [argv]


def test_backslash_newline_continues_outside_single_quotes_only() -> None:
    assert split_command_text('a "x\\\ny" b') == [["a", "xy", "b"]]
    assert split_command_text("a 'x\\\ny' b") == [["a", "x\\\ny", "b"]]
