from __future__ import annotations

import importlib
import logging
import sys

import typer
from rich.console import Console

from mechunlearn import __version__
from mechunlearn.errors import MechunlearnError

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


COMMAND_MODULES = ("facts", "localize", "edit", "evaluate", "run")
for _name in COMMAND_MODULES:
    try:
        importlib.import_module(f"mechunlearn.cli.{_name}")
    except ModuleNotFoundError as e:
        if e.name != f"mechunlearn.cli.{_name}":
            raise


def main() -> None:
    try:
        app()
    except MechunlearnError as e:
        console.print(f"[red]error:[/red] {e}")
        sys.exit(2)
