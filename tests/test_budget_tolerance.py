"""The ``within`` budget rule keeps a compared arm within a tolerance of FLU's parameter count by
skipping large candidates and mixing matrix sizes, the tolerance is a checked config key, and the
report flags an arm outside it (tiny llama: attention layer 12,288 parameters = q 4,096 + k 2,048 +
v 2,048 + o 4,096; MLP layer 24,576 = three matrices of 8,192)."""

import pytest

from mechunlearn.errors import MechunlearnError
from mechunlearn.experiment.config import DEFAULT_LR_LADDER, BudgetSpec, load_config
from mechunlearn.experiment.schema import ConfigError
from mechunlearn.localize import Localization, Selection, select
from mechunlearn.localize.budget import BUDGET_TOLERANCE
from mechunlearn.localize.scores import head_and_mlp_scores
from mechunlearn.report import budget as report_budget
from mechunlearn.report import verdicts

ATTN, MLP, IN = 12_288, 24_576, 8_192


@pytest.fixture(scope="module")
def arch(tiny_llama):
    assert sum(c.n_params for c in tiny_llama.arch.matrices([0], blocks=("attn",))) == ATTN
    assert sum(c.n_params for c in tiny_llama.arch.matrices([0], blocks=("mlp",))) == MLP
    return tiny_llama.arch


def _loc(arch, attn: dict, mlp: dict) -> Localization:
    """Whole-block scores (causal tracing's form), ranked at layer granularity by default."""
    return Localization("causal_tracing", {}, ["a"], head_and_mlp_scores(arch, {}, mlp, attn_scores=attn), {}, "tiny")


def _layers(sel: Selection) -> list[str]:
    return sorted({".".join(c.split(".")[:3]) for c in sel.components})


def test_within_skips_the_layer_that_would_overshoot_where_closest_takes_it(arch):
    loc = _loc(arch, {3: 0.9, 2: 0.5}, {0: 0.8, 1: 0.4})  # ranked: attn 3, MLP 0, attn 2, MLP 1
    closest = select(loc, arch, budget=25_000, rule="closest")
    assert closest.n_params == ATTN + MLP == 36_864  # +47.5%: the paper's rule takes MLP 0
    within = select(loc, arch, budget=25_000, rule="within")
    assert within.n_params == 2 * ATTN == 24_576  # -1.7%: MLP 0 skipped, attention 2 fills
    assert within.rule == "within" and within.granularity == "layer" and within.tolerance == BUDGET_TOLERANCE
    assert _layers(within) == ["blocks.2.attn", "blocks.3.attn"] and within.note == ""
    assert within.n_params == sum(arch.component(c).n_params for c in within.components)


def test_within_mixes_matrix_sizes_where_whole_layers_cannot_land(arch):
    loc = _loc(arch, {3: 0.9}, {0: 0.8, 1: 0.7})  # layers: attention 3 then MLPs, no second attention
    sel = select(loc, arch, budget=MLP, rule="within", tolerance=0.2)  # band [19,661, 29,491]
    # layers: attention 3 (12,288), both MLPs would overshoot -> -50%; matrices: attention 3's four
    # matrices, then MLP 0's first matrix (20,480, -16.7%) lands inside
    assert sel.granularity == "matrix" and sel.n_params == ATTN + IN == 20_480
    assert sel.components == ["blocks.3.attn.q", "blocks.3.attn.k", "blocks.3.attn.v", "blocks.3.attn.o",
                              "blocks.0.mlp.in"]
    assert "layer candidates could not land within +-20% of the budget: cut at matrix granularity" in sel.note
    assert "outside" not in sel.note


def test_inside_the_band_the_next_candidate_is_taken_when_it_lands_nearer(arch):
    loc = _loc(arch, {3: 0.9, 2: 0.5}, {0: 0.8})
    sel = select(loc, arch, budget=26_000, granularity="matrix", rule="within")  # band [23,400, 28,600]
    # attention 3 (12,288) + MLP 0 in (20,480); gate and out would pass 28,600; attention 2's q enters the
    # band at 24,576 (-5.5%); its k (2,048) lands nearer, at 26,624 (+2.4%), and is taken too
    assert sel.n_params == 26_624 and sel.components[-3:] == ["blocks.0.mlp.in", "blocks.2.attn.q", "blocks.2.attn.k"]


def test_within_keeps_the_nearest_miss_and_says_so_when_nothing_lands(arch):
    loc = _loc(arch, {3: 0.9}, {0: 0.8, 1: 0.7})
    sel = select(loc, arch, budget=MLP, rule="within")  # band [22,118, 27,034]: no prefix walk lands
    assert sel.n_params == 20_480 and sel.granularity == "matrix"  # nearer than the layers' 12,288
    assert "outside the tolerance: 20480 parameters, -16.7% against the budget 24576 (+-10%)" in sel.note


def test_within_against_flu_matches_its_size(arch):
    flu = Localization("fact_lookup", {}, ["a"], {}, {"granularity": "layer"}, "tiny",
                       ["blocks.1.mlp.in", "blocks.1.mlp.gate", "blocks.1.mlp.out"])
    loc = _loc(arch, {3: 0.9, 2: 0.5}, {0: 0.8})
    sel = select(loc, arch, match=flu, rule="within")
    assert sel.budget == MLP and sel.n_params == 2 * ATTN  # two attention layers, not attention 3 + MLP 0


def test_a_bad_tolerance_is_refused(arch):
    loc = _loc(arch, {3: 0.9}, {0: 0.8})
    for bad in (0, 1, 1.5, -0.1, True, "10%"):
        with pytest.raises(MechunlearnError, match="fraction of the budget between 0 and 1"):
            select(loc, arch, budget=MLP, rule="within", tolerance=bad)
    assert select(loc, arch, budget=MLP, rule="closest", tolerance=5).rule == "closest"  # only 'within' reads it


def test_the_tolerance_and_the_rule_are_checked_config_keys():
    assert BudgetSpec().rule == "within" and BudgetSpec().tolerance == 0.1
    assert load_config("demo", {"localization": {"budget": {"tolerance": 0.05}}}).localization.budget.tolerance == 0.05
    for value, message in ((1.5, "between 0 and 1"), (0, "between 0 and 1"), ("10%", "expected")):
        with pytest.raises(ConfigError, match=message) as e:
            load_config("demo", {"localization": {"budget": {"tolerance": value}}})
        assert "localization.budget.tolerance" in str(e.value)
    with pytest.raises(ConfigError, match="'localization.budget.rule' is 'nearest': use one of under, closest, within"):
        load_config("demo", {"localization": {"budget": {"rule": "nearest"}}})


def test_the_ladder_is_on_by_default_where_it_has_a_place():
    assert load_config("demo").training.lr_ladder == DEFAULT_LR_LADDER
    assert load_config("demo", {"training": {"lr_ladder": None}}).training.lr_ladder is None
    swept = load_config("demo", {"training": {"sweep": {"lr": [1e-4, 3e-4]}}})
    assert swept.training.lr_ladder is None  # a sweep chooses the lr itself
    assert load_config("demo", {"training": {"target": None}}).training.lr_ladder is None  # nothing to miss
    with pytest.raises(ConfigError, match="training.lr_ladder"):  # a ladder the config gives still conflicts
        load_config("demo", {"training": {"sweep": {"lr": [1e-4]}, "lr_ladder": [1e-3]}})


def test_one_step_cap_for_edit_run_and_demo():
    from mechunlearn.cli.edit import CLI_STEPS
    from mechunlearn.edit.config import DEFAULT_STEPS, EditConfig

    demo = load_config("demo")
    default = load_config(None)
    assert CLI_STEPS == EditConfig().steps == DEFAULT_STEPS == 30
    assert demo.edit_config("causal_tracing", demo.settings[0], 0).steps == DEFAULT_STEPS
    assert default.edit_config("causal_tracing", default.settings[0], 0).steps == DEFAULT_STEPS


def _cell(method: str, seed: int, n_params: int, budget: dict | None = None, **metrics) -> dict:
    cell = {"setting": "s", "method": method, "seed": seed, "n_params": n_params, "curves": {},
            "metrics": {"edit.qa.p_new": 0.5, "relearn.error": 0.5, **metrics}}
    if budget is not ...:
        cell["budget"] = budget
    return cell


def test_the_report_flags_an_arm_outside_the_tolerance():
    cut = {"params": 1000, "matched_to": "fact_lookup", "rule": "closest", "tolerance": 0.1}
    cells = []
    for seed, (qa, ct_size) in enumerate(((0.9, 1420), (0.91, 1000), (0.92, 1000))):
        cells += [_cell("fact_lookup", seed, 1000, None, **{"edit.qa.p_new": qa}),
                  _cell("causal_tracing", seed, ct_size, cut),
                  _cell("attribution_patching", seed, 1050, cut),
                  _cell("all_mlps", seed, 9000, None),
                  _cell("random", seed, 800, ...)]  # an older cell: checked against FLU's at the default
    rows = {(r["method"], r["seed"]): r for r in report_budget.gaps(cells)}
    assert set(rows) == {(m, s) for m in ("causal_tracing", "attribution_patching", "random") for s in range(3)}
    assert rows[("causal_tracing", 0)]["gap"] == pytest.approx(0.42) and rows[("causal_tracing", 0)]["outside"]
    assert rows[("attribution_patching", 0)]["gap"] == pytest.approx(0.05) and not rows[("attribution_patching", 0)]["outside"]
    assert rows[("random", 1)]["gap"] == pytest.approx(-0.2) and rows[("random", 1)]["outside"]
    assert report_budget.outside(cells) == {("s", "causal_tracing"): [(0, pytest.approx(0.42))],
                                            ("s", "random"): [(0, pytest.approx(-0.2)), (1, pytest.approx(-0.2)),
                                                              (2, pytest.approx(-0.2))]}
    (line,) = report_budget.section(cells)
    assert line.startswith("<p class=lose>Budget: 4 of 9 compared cells")
    assert "causal tracing (s, seed 0): 1,420 against 1,000 (+42.0%)" in line
    found = {v["vs"]: v for v in verdicts(cells) if v["metric"] == "edit.qa.p_new"}
    assert found["causal_tracing"]["budget_outside"] == {"0": pytest.approx(0.42)}
    assert found["causal_tracing"]["text"].endswith(
        "Caution: causal tracing trained a parameter count outside the budget tolerance (seed 0: +42.0%).")
    assert found["attribution_patching"]["budget_outside"] == {}
    assert "budget tolerance" not in found["attribution_patching"]["text"]
    inside = [c for c in cells if c["method"] not in ("causal_tracing", "random")]
    (line,) = report_budget.section(inside)
    assert line == ("<p class=note>Budget: every compared arm trained within ±10% of the parameter count it was cut "
                    "to (FLU&#x27;s); the largest gap is +5.0% (attribution patching, s, seed 0).</p>")


def test_edit_cuts_a_localization_by_the_runs_rule_unless_told_otherwise(arch, tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from mechunlearn.cli.app import app

    path = tmp_path / "ct.json"
    _loc(arch, {3: 0.9, 2: 0.5}, {0: 0.8, 1: 0.4}).save(path)
    args = ["edit", "--model", str(tiny_dir), "--localization", str(path), "--budget", "30000", "--force",
            "--out", str(tmp_path / "e"), "--dry-run"]
    trained = {}
    for rule in (None, "under"):
        done = CliRunner().invoke(app, args + (["--rule", rule] if rule else []))
        assert done.exit_code == 0, done.output
        trained[rule] = int(done.output.split(" trained parameters")[0].split()[-1].replace(",", ""))
    # a run's 'within' mixes matrix sizes to land at 28,672 (-4.4%); 'under' stops at 24,576 (-18%)
    assert trained == {None: 2 * ATTN + 4_096, "under": 2 * ATTN}  # + one 4,096-parameter q or o matrix
    bad = CliRunner().invoke(app, args + ["--rule", "nearest"])
    assert isinstance(bad.exception, MechunlearnError) and "unknown --rule 'nearest'" in str(bad.exception)
