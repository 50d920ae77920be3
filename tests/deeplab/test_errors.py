"""How every CLI prints errors: ours and environmental OSErrors as one line + exit 2; a bug keeps its traceback."""

from __future__ import annotations

import argparse
import errno

import pytest

from deeplab.errors import DeeplabError, run_command


def _raising(err: BaseException) -> argparse.Namespace:
    def func(_args: argparse.Namespace) -> int:
        raise err

    return argparse.Namespace(func=func)


@pytest.mark.parametrize(
    ("err", "line"),
    [
        (DeeplabError("config: train.seed must be >= 0,\n got -1"), "error: config: train.seed must be >= 0, got -1"),
        (PermissionError(errno.EACCES, "Permission denied", "/data/x.png"), "error: /data/x.png: Permission denied"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/runs/a", None, "/runs/b"),
            "error: /runs/a -> /runs/b: No space",
        ),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "error: [Errno 111] Connection refused"),
    ],
)
def test_user_and_environment_errors_are_one_line(err: BaseException, line: str, capsys) -> None:
    assert run_command(_raising(err)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), lines


def test_a_bug_keeps_its_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        run_command(_raising(ZeroDivisionError("a bug")))
    with pytest.raises(ValueError, match="not ours to hide"):
        run_command(_raising(ValueError("not ours to hide")))


def test_control_characters_in_a_message_are_escaped(capsys) -> None:
    """A name read from a file is untrusted text: its escape sequences reach the terminal as text."""
    assert run_command(_raising(DeeplabError("config: unknown key model.\x1b[2Jevil\x07"))) == 2
    assert capsys.readouterr().err == "error: config: unknown key model.\\x1b[2Jevil\\x07\n"


def test_an_error_a_library_wraps_is_one_line_when_the_cli_knows_it(capsys) -> None:
    """A CLI's ``known`` names an environmental error a library raised in its own type; others stay bugs."""

    def known(err: Exception) -> str | None:
        return "tracking store /x/mlflow.db: database or disk is full" if "disk is full" in str(err) else None

    assert run_command(_raising(RuntimeError("(sqlite3.OperationalError) database or disk is full")), known) == 2
    assert capsys.readouterr().err == "error: tracking store /x/mlflow.db: database or disk is full\n"
    with pytest.raises(RuntimeError, match="a bug"):
        run_command(_raising(RuntimeError("a bug")), known)
