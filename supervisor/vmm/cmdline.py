"""Commands as text: splitting text into argv lists, and rendering argv lists as text.

Two text forms meet here. libvirt writes commands one argument group per line, joined by
backslash-newline, with arguments single-quoted when they hold shell metacharacters
(``virCommandToStringFull``); its argv2xml reader splits such text on whitespace and takes
a word that *starts* with a quote up to the next identical quote, without escapes. Our own
``domxml-to-native`` prints one shell-quoted line per command (:func:`render_shell`), which
must read back with :func:`split_command_text` so that the two CLI verbs compose.

Where the two quoting rules differ, POSIX shell rules win:

* a backslash outside quotes escapes the next character (libvirt keeps it literally);
* a backslash-newline inside single quotes stays in the word (libvirt's loader joins
  the lines there too);
* inside double quotes a backslash escapes ``"``, ``\\``, ``$`` and a backquote
  (libvirt keeps it);
* a quote in the middle of a word opens a quoted part of that same word, and text right
  after a closing quote continues the word (libvirt ends the word at the closing quote).

Neither difference touches text that libvirt renders: it quotes every argument holding a
backslash or a quote, and inside single quotes both rules read every character as is.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Sequence
from typing import Final

from supervisor.errors import InvalidArgvError

__all__ = ["render_libvirt", "render_shell", "split_command_text"]

#: The characters that make ``virBufferEscapeShell`` quote an argument.
_SHELL_SPECIAL: Final = frozenset("\r\t\n !\"#$&'()*;<>?[\\]^`{|}~")
#: What separates words outside quotes: the shell's blanks, a newline ending a command,
#: and a carriage return so that CRLF text reads like LF text.
_BLANKS: Final = frozenset(" \t\r\n")
#: What a backslash escapes inside double quotes (POSIX sh).
_DQUOTE_ESCAPABLE: Final = frozenset({"$", "`", '"', "\\"})


def split_command_text(text: str) -> list[list[str]]:
    """Split the text form of commands into argv lists, one per command.

    A backslash-newline outside single quotes continues the command on the next line (as
    in libvirt's rendering); any other newline outside quotes ends a command, and commands
    without words (blank lines) are dropped. Words are split on blanks with single and
    double quotes and backslash escapes, see the module docstring for the rules. A
    newline inside quotes belongs to the word, so an argument holding one survives
    :func:`render_shell`.

    Raises:
        InvalidArgvError: a quote is left open; the message names the line it opened on.
    """
    joined = text
    commands: list[list[str]] = []
    words: list[str] = []
    word: list[str] = []
    in_word = False
    quote = ""
    quote_line = line = 1
    pos = 0
    while pos < len(joined):
        char = joined[pos]
        pos += 1
        if char == "\n":
            line += 1
        if quote == "'":
            if char == "'":
                quote = ""
            else:
                word.append(char)
        elif quote == '"':
            if char == '"':
                quote = ""
            elif char == "\\" and (skip := _continuation(joined, pos)):
                pos += skip
                line += 1
            elif char == "\\" and joined[pos : pos + 1] in _DQUOTE_ESCAPABLE:
                word.append(joined[pos])
                pos += 1
            else:
                word.append(char)
        elif char in "'\"":
            quote, quote_line, in_word = char, line, True
        elif char == "\\" and (skip := _continuation(joined, pos)):
            pos += skip
            line += 1
        elif char == "\\" and pos < len(joined):
            word.append(joined[pos])
            pos += 1
            in_word = True
        elif char in _BLANKS:
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
            if char == "\n" and words:
                commands.append(words)
                words = []
        else:
            word.append(char)
            in_word = True
    if quote:
        raise InvalidArgvError(
            f"line {quote_line}: the {quote} quote opened here is never closed", field="text"
        )
    if in_word:
        words.append("".join(word))
    if words:
        commands.append(words)
    return commands


def _continuation(text: str, pos: int) -> int:
    """How many characters after a backslash at ``pos - 1`` make a line continuation."""
    if text.startswith("\n", pos):
        return 1
    if text.startswith("\r\n", pos):
        return 2
    return 0


def _escape_libvirt(arg: str) -> str:
    """``virBufferEscapeShell``: quote only when needed, ``'`` as ``'\\''``."""
    if arg == "":
        return "''"
    if not any(char in _SHELL_SPECIAL for char in arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


def render_libvirt(argv: Sequence[str]) -> str:
    """Render a command as libvirt's ``virCommandToStringFull(linebreaks, stripCommandPath)``.

    The program is reduced to its basename; every argument is shell-escaped the way
    ``virBufferEscapeShell`` does it; arguments are separated by a space, and by a
    backslash-newline before each option and before any argument that does not belong
    to an option (the VM name after the last option). No trailing newline.

    Raises:
        InvalidArgvError: *argv* is empty.
    """
    if not argv:
        raise InvalidArgvError("cannot render an empty command", field="argv")
    args = [posixpath.basename(argv[0]), *argv[1:]]
    is_option = [arg.startswith("-") for arg in args]
    parts = [_escape_libvirt(args[0])]
    for i in range(1, len(args)):
        keeps_line = not is_option[i] and any(is_option[1:i]) and any(is_option[i - 1 :])
        parts.append(" " if keeps_line else " \\\n")
        parts.append(_escape_libvirt(args[i]))
    return "".join(parts)


def render_shell(argv: Sequence[str]) -> str:
    """One shell-quoted line (``shlex.join``) that :func:`split_command_text` reads back.

    Raises:
        InvalidArgvError: *argv* is empty.
    """
    if not argv:
        raise InvalidArgvError("cannot render an empty command", field="argv")
    return shlex.join(argv)
