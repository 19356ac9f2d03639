"""One error type for everything a user can get wrong, the CLI wrapper that reports it, and the `--help`
layout every tool shares.

A `UserError` carries a one-paragraph message (what was wrong, what was expected, what to do). Scripts run
their `main` through `run_cli`, which prints that message instead of a traceback and exits non-zero. Any other
exception is a bug in this project and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input or environment, explained in plain words."""


def run_cli(main: Callable[[], object]) -> None:
    """Run `main`, turning a `UserError` into a clear message and exit code 2."""
    try:
        main()
    except UserError as err:
        message = str(err)
        if "Original Traceback" in message:  # raised in a DataLoader worker, which wraps the remote traceback
            message = message.rsplit("UserError: ", 1)[-1]
        message = " ".join(message.split())
        print(
            "\n".join(textwrap.wrap(f"error: {message}", width=110, break_on_hyphens=False, break_long_words=False)),
            file=sys.stderr,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each flag's default as a user would type it (`runs`, not `[PosixPath('runs')]`), and nothing where
    the default is None or the help already says what it depends on."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if default is None or default is argparse.SUPPRESS or "default" in help_text or action.nargs == 0:
            return help_text
        return f"{help_text} (default: {typed(default).replace('%', '%%')})"


def typed(value: object) -> str:
    """A default value as it would be typed on the command line."""
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(isinstance(v, int) for v in value):
            return f"{value[0]}x{value[1]}"  # an image size
        return " ".join(map(str, value))
    return str(value)
