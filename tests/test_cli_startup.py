"""The command line answers --help, --version and a bad input at once: none of them imports torch
or transformers (they cost seconds of start-up). Each case runs in a fresh interpreter, as a
user's shell would, and reports which heavy modules it imported."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers")

# (arguments, expected exit status, a piece of the error line or None)
HELP = [
    (["--help"], 0, None),
    (["--version"], 0, None),
    *[([*command, "--help"], 0, None) for command in (
        ["run"], ["demo"], ["edit"], ["apply-diff"], ["localize"], ["evaluate"], ["report"], ["plan"],
        ["facts"], ["facts", "known"])],
]
ERRORS = [
    (["run", "missing.yaml", "--out", "out"], 2, "no such config file: missing.yaml"),
    (["run", "demo", "--out", "out", "--set", "seeds=[]"], 2, "config key 'seeds' is empty"),
    (["run", "demo", "--out", "out", "--set", "localization.methods=[nope]"], 2, "'localization.methods[0]'"),
    (["edit", "--out", "out", "--components", "blocks.3.mlp", "--dataset", "table", "--data", "missing.csv"], 2,
     "no such data file: missing.csv"),
    (["edit", "--out", "out", "--localization", "missing.json"], 2, "missing.json"),
    (["edit", "--out", "out", "--components", "blocks.3.mlp", "--objective", "nope"], 2, "unknown objective 'nope'"),
    (["edit", "--out", "out", "--components", "blocks.3.mlp", "--model", "no/such/folder"], 2,
     "no such model folder or file"),
    (["edit", "--out", "out", "--components", "blocks.3.mlp", "--steps", "many"], 2, "'--steps'"),
    (["localize", "--method", "nope", "--out", "loc.json"], 2, "unknown method 'nope'"),
    (["localize", "--method", "causal_tracing", "--param", "nope=1", "--out", "loc.json"], 2, "--param nope"),
    (["facts", "known", "--dataset", "table", "--data", "missing.csv"], 2, "no such data file: missing.csv"),
    (["evaluate", "--forget-from", "missing.json"], 2, "missing.json"),
    (["apply-diff", "missing", "--out", "rebuilt"], 2, "no such diff file: missing"),
    (["report", "missing"], 2, "not a run folder"),
]

SCRIPT = """
import contextlib, io, json, sys
from mechunlearn.cli.app import invoke

results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = invoke(args)
    results.append({"args": args, "status": status, "stdout": out.getvalue(), "stderr": err.getvalue(),
                    "heavy": [m for m in HEAVY if m in sys.modules]})
print(json.dumps(results))
""".replace("HEAVY", repr(HEAVY))


def _run(cases, cwd) -> list[dict]:
    """Every case in one fresh interpreter, in order; each result lists the heavy modules loaded
    so far (so the first case that pulls torch is the one named)."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps([c[0] for c in cases])], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("cases", [HELP, ERRORS], ids=["help", "errors"])
def test_help_version_and_bad_inputs_do_not_import_torch(cases, tmp_path):
    for (args, status, message), result in zip(cases, _run(cases, tmp_path), strict=True):
        command = "mechunlearn " + " ".join(args)
        assert result["heavy"] == [], f"{command} imported {result['heavy']}"
        assert result["status"] == status, f"{command}: status {result['status']}\n{result['stderr']}"
        if message is None:
            assert result["stdout"].strip(), command
            continue
        lines = [line for line in result["stderr"].splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{command}: {result['stderr']}"
        assert message in lines[0], f"{command}: {lines[0]}"


def test_version_prints_the_version(tmp_path):
    from mechunlearn import __version__

    (result,) = _run([(["--version"], 0, None)], tmp_path)
    assert result["stdout"].strip() == f"mechunlearn {__version__}"


def test_light_tables_agree_with_the_registries():
    """The names a config is checked against without torch are the ones the pipeline runs."""
    from mechunlearn.edit.config import BUILTIN_FORGET_OBJECTIVES, forget_objective_names
    from mechunlearn.edit.objectives import forget_objectives
    from mechunlearn.localize import METHODS
    from mechunlearn.localize.catalog import CATALOG, METHOD_NAMES, method_defaults

    assert list(BUILTIN_FORGET_OBJECTIVES) == forget_objectives() == forget_objective_names()
    assert METHOD_NAMES == tuple(METHODS)
    for name, localizer in METHODS.items():
        assert localizer.defaults == method_defaults(name)
        assert localizer.description == CATALOG[name].description


def test_lazy_packages_keep_their_names():
    """A re-exported function that shares its module's name stays the function once that module
    is imported (as the eager ``from .m import m`` made it)."""
    import mechunlearn.evaluate.lm_loss  # noqa: F401
    import mechunlearn.evaluate.side_effects  # noqa: F401
    import mechunlearn.models.hooks  # noqa: F401
    from mechunlearn.evaluate import EvalConfig, lm_loss, relearn, side_effects
    from mechunlearn.evaluate.config import EvalConfig as light
    from mechunlearn.models import hooks

    assert all(callable(f) and not isinstance(f, type(sys)) for f in (lm_loss, relearn, side_effects, hooks))
    assert EvalConfig is light
    with pytest.raises(AttributeError):
        import mechunlearn.facts as facts

        _ = facts.no_such_name
