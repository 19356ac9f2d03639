"""One error type for everything a user can get wrong, and the CLI wrapper that reports it.

A `UserError` carries a one-paragraph message (what was wrong, what was expected, what to do). Scripts run
their `main` through `run_cli`, which prints that message instead of a traceback and exits non-zero. Any other
exception is a bug in this project and keeps its traceback.
"""

from __future__ import annotations

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
