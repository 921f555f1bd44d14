"""A command function reads its options, checks them and hands the work to the library or to a
helper named for what it does: no command's body is longer than ``MAX_BODY_LINES``."""

import ast
from pathlib import Path

import mechunlearn.cli

MAX_BODY_LINES = 60
CLI = Path(mechunlearn.cli.__file__).parent


def _is_command(decorator: ast.expr) -> bool:
    """``@app.command(...)`` or ``@some_typer.command(...)``."""
    call = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(call, ast.Attribute) and call.attr == "command"


def _commands() -> list[tuple[str, int]]:
    """(file:function, body lines, the docstring included and the signature's options not) of
    every typer command."""
    found = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and any(_is_command(d) for d in node.decorator_list):
                found.append((f"{path.name}:{node.name}", node.end_lineno - node.body[0].lineno + 1))
    return found


def test_every_command_function_is_short():
    commands = _commands()
    assert {"edit.py:edit", "evaluate.py:evaluate", "localize.py:localize_command"} <= {n for n, _ in commands}
    long = {name: lines for name, lines in commands if lines > MAX_BODY_LINES}
    assert not long, f"command bodies over {MAX_BODY_LINES} lines: {long}"
