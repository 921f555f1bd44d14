"""Each localization method declares in the registry what the rest of the run needs (probe facts,
cost, role, report style): no other module names a method, and a method registered here is
estimated and reported without editing any other file."""

import ast
from pathlib import Path

import pytest

import mechunlearn
from mechunlearn.errors import MechunlearnError
from mechunlearn.experiment.config import RunConfig, from_dict
from mechunlearn.experiment.estimate import localization_stage
from mechunlearn.localize import METHODS, localize
from mechunlearn.localize.catalog import (
    CATALOG,
    Cost,
    LocalizerSpec,
    ReportStyle,
    register,
    uses_probes,
)
from mechunlearn.models.memory import ModelShape
from mechunlearn.report.methods import BASE, MethodStyle, compared, label, ordered, short, style

ROOT = Path(mechunlearn.__file__).parent
REGISTRY = {"localize/catalog.py", "localize/methods.py"}
# "random" is also a split mode (random, first, category), which these files name
SPLIT_MODE = {"facts/splits.py", "cli/edit.py", "experiment/config.py"}


def _named_methods(path: Path) -> list[tuple[str, int]]:
    return [(node.value, node.lineno) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in CATALOG]


def test_no_method_is_named_outside_the_registry():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        if where in REGISTRY:
            continue
        found += [f"{where}:{line} names {name!r}" for name, line in _named_methods(path)
                  if not (name == "random" and where in SPLIT_MODE)]
    assert not found, "read the method's declaration in localize/catalog.py instead:\n" + "\n".join(found)


def test_the_registry_files_do_name_every_method():
    """The grep above would pass vacuously if it looked at the wrong files."""
    assert {name for name, _ in _named_methods(ROOT / "localize/catalog.py")} == set(CATALOG)


SHAPE = ModelShape(n_params=1000, dtype_bytes=4, n_layers=6, d_model=64, d_ff=256, n_heads=4, head_dim=16,
                   vocab=500, tokenizer_bytes=10)


def _toy_cost(shape, n_facts, probe_facts, params):
    return Cost({"forward": n_facts * shape.n_layers + probe_facts, "backward": 1}, rows=n_facts,
                grad_rows=params.get("batch", 2))


def _toy_run(lm, facts, seed, batch):
    """Scores the MLP output matrices by layer: the last layer's highest."""
    names = [c.name for c in lm.arch.matrices(blocks=("mlp",)) if c.name.endswith(".out")]
    return {n: float(i + batch) for i, n in enumerate(names)}, {"rule": "toy"}, names[-1:]


@pytest.fixture
def toy():
    spec = register(LocalizerSpec("toy_tracing", "a toy output tracer", "output tracing",
                                  ReportStyle("toy", "toy tracing", "#000000", 99), _toy_cost, _toy_run,
                                  {"batch": 2}, uses_probes=True))
    try:
        yield spec
    finally:
        del CATALOG[spec.name]


def test_a_registered_method_is_estimated_by_its_declared_cost(toy):
    stage = localization_stage(SHAPE, "toy_tracing", n_facts=4, probe_facts=8, tokens=10, params={}, count=3)
    assert stage.name == "localize toy_tracing"
    assert stage.passes == {"forward": 3 * (4 * 6 + 8), "backward": 3}
    assert stage.parts["activations"] == SHAPE.activations(4, 10, False) + SHAPE.activations(2, 10, True)
    assert stage.parts["logits"] == SHAPE.logits(2, True) > 0


def test_a_registered_method_is_reported_and_compared_by_its_declared_style(toy):
    assert style("toy_tracing") == MethodStyle("toy_tracing", "toy", "toy tracing", "#000000", "output tracing")
    assert (label("toy_tracing@span"), short("toy_tracing@span")) == ("toy tracing [span]", "toy@span")
    assert compared()[-1] == "toy_tracing"
    assert ordered([BASE, "mine", "toy_tracing", "fact_lookup"]) == ["fact_lookup", "toy_tracing", "mine", BASE]


def test_a_registered_method_is_run_with_probe_facts(toy):
    config = from_dict({"localization": {"methods": ["toy_tracing", "random"], "budget": {"match": "toy_tracing"},
                                         "params": {"toy_tracing": {"batch": 4}}}})
    assert config.localization_params("toy_tracing") == {"batch": 4}
    assert uses_probes("toy_tracing") and not uses_probes("random")


def test_a_registered_method_is_run_by_localize(toy, tiny_llama):
    from mechunlearn.facts import load_builtin_athletes

    assert "toy_tracing" in METHODS
    loc = localize(tiny_llama, load_builtin_athletes().subset(load_builtin_athletes().facts[:4]), "toy_tracing",
                   batch=5)
    n = tiny_llama.arch.n_layers
    assert loc.method == "toy_tracing" and loc.params == {"batch": 5, "seed": 0}
    assert loc.chosen == [f"blocks.{n - 1}.mlp.out"] and loc.scores[f"blocks.{n - 1}.mlp.out"] == n - 1 + 5
    with pytest.raises(MechunlearnError, match="unknown parameter"):
        localize(tiny_llama, load_builtin_athletes(), "toy_tracing", width=3)


def test_a_method_without_a_declaration_is_refused_not_estimated_free():
    with pytest.raises(MechunlearnError, match="unknown localization method 'undeclared'"):
        localization_stage(SHAPE, "undeclared", n_facts=4, probe_facts=0, tokens=10, params={}, count=1)
    with pytest.raises(TypeError, match="cost"):
        LocalizerSpec("no_cost", "a method that forgot its cost", "baseline", ReportStyle("x", "x", "#000000", 0))
    with pytest.raises(MechunlearnError, match="unknown localization method 'undeclared'"):
        localize(None, None, "undeclared")
    assert "undeclared" not in CATALOG and "toy_tracing" not in CATALOG


def test_the_defaults_come_from_the_declarations():
    loc = RunConfig().localization
    assert loc.methods == ("fact_lookup", "causal_tracing", "attribution_patching", "random", "all_mlps")
    assert loc.budget.match == "fact_lookup" and loc.budget.exempt == ("all_mlps", "everything")
