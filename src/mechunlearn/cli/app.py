from __future__ import annotations

import importlib
import logging
import sys

import typer
from rich.console import Console

from mechunlearn import __version__
from mechunlearn.errors import MechunlearnError

try:
    from typer._click import exceptions as click_errors  # typer >= 0.25 carries its own click
except ImportError:
    from click import exceptions as click_errors

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Localize the components that look a fact up, fine-tune only those, and test the change.")
console = Console(stderr=True)


def _version(value: bool):
    if value:
        print(f"mechunlearn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")):
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


NOTHING_KEPT = "nothing was written (every output is written whole when its command finishes)"
_kept = [NOTHING_KEPT]


def on_interrupt(kept: str) -> None:
    """What the running command keeps when it is interrupted, and how to resume (one line)."""
    _kept[0] = kept


COMMAND_MODULES = ("facts", "localize", "edit", "evaluate", "run")
for _name in COMMAND_MODULES:
    importlib.import_module(f"mechunlearn.cli.{_name}")  # each adds its commands to `app`


def _say(message: str) -> None:
    """One line on stderr, never wrapped (plain print: rich would read '[...]' as markup)."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)


def _interrupted() -> int:
    print(f"\ninterrupted: {_kept[0]}", file=sys.stderr)
    return 130


def invoke(argv: list[str] | None = None) -> int:
    """Run the command line in this process; return its exit status. Bad input (ours or click's)
    is one ``error:`` line and status 2, never a traceback."""
    on_interrupt(NOTHING_KEPT)
    try:
        status = app(args=argv, prog_name="mechunlearn", standalone_mode=False)
        if status == 130:  # typer's answer to Ctrl-C
            return _interrupted()
        return status if isinstance(status, int) else 0
    except click_errors.NoArgsIsHelpError as e:
        print(e.ctx.get_help() if e.ctx else e.format_message(), file=sys.stderr)
        return 2
    except click_errors.UsageError as e:
        command = e.ctx.command_path if e.ctx else "mechunlearn"
        _say(f"{e.format_message()} (see '{command} --help')")
        return 2
    except click_errors.ClickException as e:
        _say(e.format_message())
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return _interrupted()
    except MechunlearnError as e:
        _say(str(e))
        return 2
    except OSError as e:
        if e.filename is None:
            raise
        _say(f"{e.filename}: {e.strerror or e}")
        return 2


def main(argv: list[str] | None = None) -> None:
    sys.exit(invoke(argv))
