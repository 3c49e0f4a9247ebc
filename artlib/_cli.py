"""What every artlib command line shares: the program name the user typed, each default shown
once in ``--help``, and errors on one line (exit status 2)."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["DefaultsOnce", "OneLineParser", "prog_name", "say"]


def say(line: str) -> None:
    """Write ``line`` and its newline to stderr in one write: under torchrun every rank writes to
    the same pipe, and with unbuffered output (``PYTHONUNBUFFERED``) ``print`` sends the text and
    the newline as two writes, between which another rank's line can land."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line on one line (``prog: error: ...``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class DefaultsOnce(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already says what its default
    is, the default is None (not set), or the option is an on/off switch."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS):
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text
        if not action.option_strings and action.nargs in ("*", "+", "?"):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def prog_name(module: str, script: str) -> str:
    """``script`` (e.g. ``artlib-check``) when the console script was run, else ``python -m
    module``; what ``usage:`` and every error line start with."""
    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script if called == script else f"python -m {module}"
