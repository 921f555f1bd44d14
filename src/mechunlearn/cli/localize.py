"""``mechunlearn localize``: score components with one method, cut them to a budget, plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from mechunlearn.cli.app import app, console
from mechunlearn.cli.common import (
    DATA,
    DATASET,
    DEVICE,
    DTYPE,
    MODEL,
    SEED,
    THRESHOLD,
    as_selection,
    check_model_args,
    check_number,
    check_out_file,
    check_threshold,
    open_model,
    read_localization,
    relation_facts,
    total_params,
)
from mechunlearn.errors import MechunlearnError
from mechunlearn.localize.budget import RULES
from mechunlearn.localize.catalog import CATALOG, METHOD_NAMES, method_defaults, uses_probes
from mechunlearn.localize.scores import GRANULARITIES, candidates

if TYPE_CHECKING:
    from mechunlearn.facts import FactSet
    from mechunlearn.localize import Localization, Selection


def _params(items: list[str], method: str) -> dict:
    """``KEY=VALUE`` items, each a parameter of ``method`` with a value of its default's type."""
    defaults = method_defaults(method)
    settable = sorted(k for k in defaults if k not in ("probe_facts", "progress"))
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MechunlearnError(f"--param takes KEY=VALUE, got {item!r}")
        if key not in settable:
            hint = "; set it with --probe-facts" if key == "probe_facts" else ""
            raise MechunlearnError(f"--param {key}: {method} has no such parameter{hint}; it takes "
                                   f"{', '.join(settable) or 'none'}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        params[key] = _typed(key, parsed, defaults[key])
    return params


def _typed(key: str, value, default):
    expected = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif isinstance(default, tuple | list):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        expected = list
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise MechunlearnError(f"--param {key}={json.dumps(value) if not isinstance(value, str) else value}: "
                               f"expected {expected.__name__} like {json.dumps(default)}")
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise MechunlearnError(f"--param {key}: must not be negative, got {value}")
    return tuple(value) if isinstance(default, tuple) else value


def _choose_facts(lm, facts: FactSet, n: int | None, n_probe: int, seed: int,
                  threshold: float | None) -> tuple[FactSet, FactSet | None]:
    """The localization facts and, when ``n_probe`` asks for more, FLU's probe facts (a
    superset): the draw a run makes for seed ``seed`` (``experiment.facts.draw_localization``),
    so that ``--facts N --seed S`` reproduces a run's localization; all known facts when ``n``
    is None."""
    from mechunlearn.experiment.facts import draw_localization
    from mechunlearn.facts import filter_known

    known = filter_known(lm.model, lm.tokenizer, facts, threshold, progress=True).known
    if n is None:
        return known, None
    local, probe = draw_localization(known, n, n_probe, seed)
    if len(local) < 1:
        raise MechunlearnError(f"the model knows only {len(known)} of the {len(facts)} facts: too few to localize on")
    if len(local) < n:
        console.print(f"note: the model knows {len(known)} of the {len(facts)} facts; localizing on {len(local)} "
                      "(at most half of them, as a run does, so the rest can be edited and evaluated)")
    return local, probe if len(probe) > len(local) else None


@app.command("localize")
def localize_command(
    method: str = typer.Option(..., "--method", help="One of: " + ", ".join(METHOD_NAMES)),
    out: Path = typer.Option(..., "--out", help="Localization JSON to write (heatmap PNG beside it)."),
    model: str = MODEL, dataset: str = DATASET, data: str = DATA, dtype: str = DTYPE, device: str = DEVICE,
    seed: int = SEED, threshold: float = THRESHOLD,
    facts: int = typer.Option(None, "--facts", help="Localize on N known facts, drawn as a run draws them for "
                              "--seed (at most half the known facts; default: all known)."),
    probe_facts: int = typer.Option(96, "--probe-facts", help="fact_lookup: probe on this many known facts (a "
                                    "superset of --facts; probes are noisy on ~30 facts). 0: the localization facts."),
    budget: int = typer.Option(None, "--budget", help="Trainable-parameter budget for the selection."),
    match: Path = typer.Option(None, "--match", help="Use this localization's (or selection's) parameter count."),
    granularity: str = typer.Option(None, "--granularity", help=" | ".join(GRANULARITIES) + " (default: the method's)"),
    rule: str = typer.Option(None, "--rule", help="within (default, as a run): within 10% of the budget, "
                             "mixing matrix sizes where whole layers cannot; closest: may overshoot by < 1 unit; "
                             "under: never exceed the budget"),
    limit: int = typer.Option(None, "--limit", help="Check a seeded sample of N facts for knowing (a run's "
                              "facts.limit)."),
    param: list[str] = typer.Option([], "--param", help="Method parameter KEY=VALUE (repeatable), e.g. n_noise=3."),
    relation: str = typer.Option(None, "--relation", help="Localize on facts of this relation only (the table's "
                                 "'relation' column), as a run setting with 'relation:' does."),
):
    """Score components with one localization method and choose the ones to train. With --facts
    N and --seed S it localizes on the facts a run with n_facts N localizes on for seed S."""
    from mechunlearn.experiment.facts import limit_facts

    rule = _check_options(method, budget, match, rule, granularity, facts, limit, probe_facts, threshold)
    written_paths = [out, out.with_suffix(".png"), out.with_suffix(".selection.json"), out.with_suffix(".probes.png")]
    for path in written_paths:
        check_out_file(path)
    match_item = read_localization(match, "--match") if match is not None else None
    params = _params(param, method)
    if "progress" in method_defaults(method):
        params.setdefault("progress", True)
    check_model_args({"--model": model}, dtype, device)
    from mechunlearn.facts import load_facts

    all_facts = relation_facts(limit_facts(load_facts(dataset, data), limit), relation)  # as a run reads its facts
    from mechunlearn.localize import localize

    lm = open_model(model, dtype, device)
    if budget is not None and budget > total_params(lm.arch):
        raise MechunlearnError(f"--budget {budget:,} exceeds the {total_params(lm.arch):,} parameters of all the "
                               "model's attention and MLP matrices; give a smaller budget")
    if match_item is not None:
        match_item = as_selection(match_item, lm.arch)
    n_probe = probe_facts if uses_probes(method) else 0
    chosen_facts, probe_set = _choose_facts(lm, all_facts, facts, n_probe, seed, threshold)
    console.print(f"localizing with {method} on {len(chosen_facts)} known facts ({chosen_facts.count_by_answer()})")
    if probe_set is not None and "probe_facts" not in params:
        params["probe_facts"] = probe_set
        console.print(f"probes on {len(probe_set)} known facts ({probe_set.count_by_answer()})")
    loc = localize(lm, chosen_facts, method, seed=seed, **params)
    if "mlp_path_patching" in loc.evidence:
        console.print(f"FLU: receiver layer {loc.evidence['receiver_layer']}, MLP layers {loc.evidence['flu_layers']}"
                      f"; rule: {loc.evidence['rule']}")
    try:
        selection = as_selection(loc, lm.arch, budget=budget, match=match_item, granularity=granularity, rule=rule)
    except MechunlearnError as e:
        if budget is not None or match is not None or loc.chosen:
            raise
        _print_ranking(loc, lm.arch, granularity)
        console.print(f"note: {e}")
        selection = None
    if selection is not None and (budget is not None or match is not None):
        # recorded so that 'edit --localization' cuts this file as it was cut here
        loc.evidence["selection"] = {"budget": selection.budget, "rule": selection.rule,
                                     "granularity": selection.granularity, "n_params": selection.n_params,
                                     "match": str(match) if match is not None else None}
    _save(loc, selection, method, out, lm.arch)


def _check_options(method: str, budget: int | None, match: Path | None, rule: str | None, granularity: str | None,
                   facts: int | None, limit: int | None, probe_facts: int, threshold: float | None) -> str:
    """The cheap checks of the options; the budget rule to use."""
    from mechunlearn.experiment.config import BudgetSpec

    rule = BudgetSpec.rule if rule is None else rule
    if method not in CATALOG:
        raise MechunlearnError(f"unknown method {method!r}: {', '.join(CATALOG)}")
    if budget is not None and match is not None:
        raise MechunlearnError("give --budget or --match, not both")
    if rule not in RULES:
        raise MechunlearnError(f"unknown --rule {rule!r}: {', '.join(RULES)}")
    if granularity is not None and granularity not in GRANULARITIES:
        raise MechunlearnError(f"unknown --granularity {granularity!r}: {', '.join(GRANULARITIES)}")
    check_number("--budget", budget, above=0)
    check_number("--facts", facts, minimum=1)
    check_number("--limit", limit, minimum=1)
    check_number("--probe-facts", probe_facts, minimum=0)
    check_threshold(threshold)
    return rule


def _save(loc: Localization, selection: Selection | None, method: str, out: Path, arch) -> None:
    """The localization, its plots and its selection beside it; the selection is printed."""
    from mechunlearn.localize.plots import plot_heatmap, plot_probe_curves

    loc.save(out)
    written = [out, plot_heatmap(loc, out.with_suffix(".png"), selection.components if selection else None)]
    if "mlp_path_patching" in loc.evidence:
        written.append(plot_probe_curves(loc, out.with_suffix(".probes.png")))
    if selection is not None:
        written.append(selection.save(out.with_suffix(".selection.json")))
        table = Table(title=f"{method}: {len(selection.components)} components, {selection.n_params:,} parameters "
                            f"(budget {selection.budget:,}, rule {selection.rule}, {selection.granularity})")
        table.add_column("component")
        table.add_column("parameters", justify="right")
        for name in selection.components:
            table.add_row(name, f"{arch.component(name).n_params:,}")
        console.print(table)
        if selection.note:
            console.print(f"note: {selection.note}")
    console.print("wrote " + ", ".join(str(p) for p in written))


def _print_ranking(loc, arch, granularity: str | None, top: int = 12) -> None:
    ranked = sorted(candidates(loc.scores, arch, granularity or loc.evidence.get("granularity", "layer")),
                    key=lambda c: (-c.score, c.order))
    table = Table(title=f"{loc.method}: top {min(top, len(ranked))} of {len(ranked)} candidates")
    table.add_column("candidate")
    table.add_column("|score|", justify="right")
    table.add_column("parameters", justify="right")
    for c in ranked[:top]:
        table.add_row(c.label, f"{c.score:.4f}", f"{c.n_params(arch):,}")
    console.print(table)
