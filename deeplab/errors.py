"""The project's exception: one line that names the culprit (field, file, iteration), and how CLIs print it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_BAD_INPUT = 2


class DeeplabError(Exception):
    """A user-facing error; the CLI prints ``str(err)`` on one line and exits non-zero."""


def os_error_line(err: OSError) -> str:
    """``PATH: Permission denied`` (both paths of a rename/copy); the plain text when no file is involved."""
    if err.filename is None:
        return str(err)
    names = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else f"{err.filename}"
    return f"{names}: {err.strerror or err.__class__.__name__}"


def run_command(args: argparse.Namespace, known: Callable[[Exception], str | None] | None = None) -> int:
    """Run a parsed subcommand (``args.func``). Our errors and environmental OSErrors (disk full, permissions,
    a file gone) become one ``error:`` line and exit 2, and so does any error ``known`` gives a line for (an
    environmental error a library wraps); anything else is a bug and keeps its traceback."""
    try:
        return int(args.func(args) or 0)
    except DeeplabError as err:
        message = str(err)
    except OSError as err:
        message = os_error_line(err)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        line = known(err) if known is not None else None
        if line is None:
            raise
        message = line
    print(f"error: {one_line(message)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def one_line(message: str) -> str:
    """The message on one line, its control characters escaped: names from a file or a store are untrusted text,
    and an escape sequence in them must not rewrite the user's terminal."""
    text = " ".join(message.split())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
