"""The interactive shell ``bhyvesupctl`` runs when no verb is given (supervisorctl's model).

Each line is split with :func:`shlex.split` and handed to the very parser and verbs the
one-shot command uses, so the shell cannot drift from the command line. A usage error or
a failed verb prints its message and the shell goes on; ``quit``, ``exit`` or end of input
leave. The global options given on the command line (``-s PATH``) apply to every line,
and a line may still override them.
"""

from __future__ import annotations

import argparse
import cmd
import copy
import shlex
import sys
from collections.abc import Callable
from typing import IO, Any, Final

__all__ = ["Shell", "run_shell", "verbs_of"]

PROMPT: Final = "bhyvesupctl> "


def verbs_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The verbs *parser* knows (aliases included), each with its one-line help."""
    verbs: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                verbs[name] = helps.get(name) or sub.description or ""
    return verbs


class Shell(cmd.Cmd):
    """A ``cmd.Cmd`` that runs bhyvesupctl verbs.

    Args:
        parser: the full bhyvesupctl parser.
        execute: runs a parsed namespace and returns its exit status.
        defaults: the global options already given (``-s``), applied to every line.
        stdin, stdout: the streams to use (the process's by default).
    """

    prompt = PROMPT
    intro = 'bhyvesupctl shell: "help" lists the verbs, "quit" leaves'

    def __init__(
        self,
        parser: argparse.ArgumentParser,
        execute: Callable[[argparse.Namespace], int],
        *,
        defaults: argparse.Namespace | None = None,
        stdin: IO[str] | None = None,
        stdout: IO[str] | None = None,
    ) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        if stdin is not None:
            # cmd only reads from a given stream when told not to use input().
            self.use_rawinput = False
        if not (stdin or sys.stdin).isatty():
            # Commands fed through a pipe: no prompts or banner between the outputs.
            self.prompt = ""
            self.intro = ""
        self.parser = parser
        self.execute = execute
        self.defaults = defaults or argparse.Namespace()
        self.last_status = 0
        self._verbs = verbs_of(parser)

    # -- running lines

    def run_line(self, line: str) -> int:
        """Run one shell line as if it were a bhyvesupctl command line; its exit status."""
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            self._error(f"{exc}")
            return 2
        if not argv:
            return 0
        namespace = copy.copy(self.defaults)
        try:
            args = self.parser.parse_args(argv, namespace=namespace)
        except SystemExit as exc:
            # argparse already printed the usage message (or the help asked for).
            return exc.code if isinstance(exc.code, int) else 2
        if not any(word in self._verbs for word in argv):
            # Only global options: in the shell that would start another shell.
            self._error("no verb given (try 'help')")
            return 2
        try:
            return self.execute(args)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1

    def default(self, line: str) -> None:
        self.last_status = self.run_line(line)

    def emptyline(self) -> bool:
        # cmd's default repeats the last command; for "destroy all" that is dangerous.
        return False

    def _error(self, message: str) -> None:
        sys.stderr.write(f"bhyvesupctl: {message}\n")
        sys.stderr.flush()

    # -- leaving

    def do_quit(self, arg: str) -> bool:
        """quit: leave the shell."""
        return True

    do_exit = do_quit

    def do_EOF(self, arg: str) -> bool:
        """End of input leaves the shell."""
        self.stdout.write("\n" if self.prompt else "")
        return True

    # -- help and completion

    def do_help(self, arg: str) -> bool | None:
        """help [VERB]: list the verbs, or show one verb's usage."""
        if arg:
            verb = arg.split()[0]
            if verb in ("quit", "exit", "help"):
                return super().do_help(verb)
            self.run_line(f"{shlex.quote(verb)} --help")
            return None
        verbs = self._verbs
        width = max(len(v) for v in [*verbs, "quit"])
        for name, text in sorted(verbs.items()):
            self.stdout.write(f"  {name.ljust(width)}  {text}\n")
        self.stdout.write(f"  {'quit'.ljust(width)}  leave the shell (also exit, ^D)\n")
        return None

    def completenames(self, text: str, *ignored: Any) -> list[str]:
        names = [*self._verbs, "help", "quit", "exit"]
        return sorted(n for n in names if n.startswith(text))


def run_shell(
    parser: argparse.ArgumentParser,
    execute: Callable[[argparse.Namespace], int],
    defaults: argparse.Namespace | None = None,
) -> int:
    """Run the shell on the terminal until ``quit`` or end of input; exit status 0.

    ``^C`` at the prompt abandons the line being typed rather than the shell, as in
    supervisorctl; a second one at an empty prompt is still just a new prompt.
    """
    shell = Shell(parser, execute, defaults=defaults)
    try:
        import readline  # noqa: F401  -- line editing and history when available
    except ImportError:
        pass
    while True:
        try:
            shell.cmdloop()
            return 0
        except KeyboardInterrupt:
            shell.intro = ""
            shell.stdout.write("^C\n")
