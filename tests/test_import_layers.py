"""The pipeline's layers point down: a module imports only from its own layer, a layer below, or a
peer of its rank that does not import it back (every import counts, those inside functions too);
and no modules import each other in a cycle."""

import ast
from pathlib import Path

import mechunlearn

ROOT = Path(mechunlearn.__file__).parent
# facts, models < localize, edit < evaluate < report < experiment < cli; the top-level helper modules
# (errors, io, profiling, _lazy) sit below them all
LAYERS = {"facts": 0, "models": 0, "localize": 1, "edit": 1, "evaluate": 2, "report": 3, "experiment": 4, "cli": 5}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mechunlearn"):
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names
                      if f"{node.module}.{a.name}" in modules]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("mechunlearn")]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_import_points_down():
    modules = _modules()
    upward, sideways = [], {}
    for name, path in modules.items():
        mine = _layer(name)
        if mine is None:
            continue
        for target, line in _imports(path, modules):
            theirs = _layer(target)
            if theirs is None or theirs == mine:
                continue
            if LAYERS[theirs] > LAYERS[mine]:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            elif LAYERS[theirs] == LAYERS[mine]:
                sideways.setdefault((mine, theirs), f"{path.relative_to(ROOT)}:{line}")
    assert not upward, "imports that point up:\n" + "\n".join(upward)
    both_ways = [f"{a} <-> {b} ({where}; {sideways[b, a]})" for (a, b), where in sideways.items()
                 if (b, a) in sideways and a < b]
    assert not both_ways, "peer layers that import each other: " + "; ".join(both_ways)


def test_no_import_cycles_between_modules():
    modules = _modules()
    plain = {m: p for m, p in modules.items() if p.name != "__init__.py"}  # packages re-export lazily
    graph = {m: {t for t, _ in _imports(p, modules) if t in plain and t != m} for m, p in plain.items()}
    cycles, done = [], set()

    def visit(node, path):
        for nxt in graph[node]:
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for module in graph:
        if module not in done:
            visit(module, [module])
    assert not cycles, "modules that import each other: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_a_planted_violation(tmp_path):
    """The parser finds imports inside functions (where the old cycles hid)."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from mechunlearn.experiment.runner import Experiment\n")
    assert ("mechunlearn.experiment.runner", 2) in _imports(planted, _modules())
