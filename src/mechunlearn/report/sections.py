"""The report's sections on the fairness of the comparison: the verdicts with their multiplicity,
how hard each arm was trained, the formats and templates used, and FLU's stability over seeds."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from mechunlearn.report import stability, training
from mechunlearn.report.analysis import AnalysisSpec
from mechunlearn.report.methods import BASE, label, ordered, split_arm
from mechunlearn.report.metrics import METRICS
from mechunlearn.report.verdicts import decision_rule, one_seed_note, verdicts

NOT_RECORDED = "not recorded"


def img(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def table(df: pd.DataFrame) -> str:
    """A table in a box that scrolls sideways by itself when it is wider than the page; missing
    values (None or NaN) read as a dash."""
    df = df.apply(lambda col: col.map(lambda v: "–" if v is None else v) if col.dtype == object else col)
    shown = df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0, classes="t")
    return f"<div class=scroll>{shown}</div>"


def _p(text: str, cls: str | None = None) -> str:
    return f"<p{f' class={cls}' if cls else ''}>{html.escape(text)}</p>"


def incomplete_seeds(cells: list[dict]) -> dict[int, list[str]]:
    """Per seed, the cells (setting · arm) that another seed has and it lacks."""
    grid = sorted({(c["setting"], c["method"]) for c in cells})
    have = {(c["setting"], c["method"], c["seed"]) for c in cells}
    gaps = {seed: [f"{s} · {label(m)}" for s, m in grid if (s, m, seed) not in have]
            for seed in sorted({c["seed"] for c in cells})}
    return {seed: v for seed, v in gaps.items() if v}


def at_a_glance(cells: list[dict], found: list[dict], spec: AnalysisSpec) -> list[str]:
    """What was run, how hard each arm was trained, and the verdict or why there is none."""
    settings = sorted({c["setting"] for c in cells})
    seeds = sorted({c["seed"] for c in cells})
    sizes: dict[str, set] = {}
    for c in cells:
        if c["method"] != BASE:
            sizes.setdefault(c["method"], set()).add(c.get("n_params") or 0)
    arms = "; ".join(f"{label(m)} {'/'.join(_size(n) for n in sorted(sizes[m]))}" for m in ordered(sizes))
    items = [f"Run: {len(settings)} setting(s) ({', '.join(settings)}), {len(seeds)} seed(s) "
             f"({', '.join(map(str, seeds))}); arms and trained parameters: {arms or 'none'}."]
    codes = sorted({c.get("code") or "none" for c in cells})
    if len(codes) > 1:
        items.append(f"Code: the cells were computed by {len(codes)} versions of mechunlearn (fingerprints "
                     f"{', '.join(codes)}; 'none': a version that did not record it); where the code changed between "
                     "them, so may the numbers.")
    gaps = incomplete_seeds(cells)
    if gaps:
        items.append("Incomplete: " + "; ".join(f"seed {seed} lacks {len(v)} of its cells ({', '.join(v)})"
                                                for seed, v in gaps.items())
                     + ". Each comparison pairs the seeds both of its arms have (a run still computing, or cells "
                       "that failed).")
    for name, described in attack_settings(cells).items():
        items.append(f"{name}: {'; '.join(described)}.")
    targets = training.targets_used(cells)
    missed = training.unreached_seeds(cells)
    trained = sum(1 for c in cells if c["method"] != BASE)
    if targets:
        short = "; ".join(f"{s} · {label(m)} (seed {', '.join(map(str, v))})" for (s, m), v in missed.items())
        items.append(f"Training: every arm trained to the same strength ({'; '.join(targets)}); "
                     + (f"missed in {sum(len(v) for v in missed.values())} of {trained} cells: {short}."
                        if missed else f"all {trained} trained cells reached it."))
    else:
        items.append("Training: no strength target was recorded, so the arms may differ in strength.")
    primary = [v for v in found if v["primary"]]
    note = one_seed_note(found)
    if note:
        items.append(f"Verdict: none. {note}")
    elif primary:
        counts = {o: sum(v["outcome"] == o for v in primary) for o in ("better", "worse", "equivalent", "inconclusive")}
        small = sum(bool(v.get("within_delta")) for v in primary)
        items.append(f"Verdict on the {len(primary)} primary comparisons (FLU better / worse / equivalent / "
                     f"inconclusive): {counts['better']} / {counts['worse']} / {counts['equivalent']} / "
                     f"{counts['inconclusive']}"
                     + (f" ({small} of the {counts['better'] + counts['worse']} better or worse by less than "
                        "delta)" if small else "")
                     + "; each below.")
    else:
        items.append("Verdict: none; the run has no primary comparison (FLU and a compared method on a declared "
                     f"endpoint: {spec.describe()}).")
    return ["<h2>At a glance</h2><ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"]


def attack_settings(cells: list[dict]) -> dict[str, list[str]]:
    """How each attack ran, once per distinct setting (the seed left out), by the attack's name."""
    seen: dict[str, dict[str, None]] = {}
    for c in cells:
        attacks = (c.get("evaluation") or {}).get("attacks") or {}
        for name, key, describe in _ATTACK_DESCRIPTIONS:
            result = attacks.get(key)
            if result and result.get("config"):
                seen.setdefault(name, {})[describe(result)] = None
    return {name: list(seen[name]) for name, _, _ in _ATTACK_DESCRIPTIONS if name in seen}


def _relearn_setting(r: dict) -> str:
    cfg = r["config"]
    rank = f" rank {cfg['rank']}" if cfg["method"] == "lora" else ""
    # the halves without their seed, and without the second fold's swap, which the fold count says
    halves = r.get("halves", "").replace(f" (seed {cfg['seed']})", "").split("; then")[0]
    folds = cfg.get("folds", 1)
    return (f"{cfg['method']}{rank}, {cfg['steps']} steps at lr {cfg['learning_rate']:g}, "
            f"{folds} fold(s) on {halves}" + ("; each half trained on once and scored once" if folds == 2 else ""))


def _probe_setting(p: dict) -> str:
    cfg = p["config"]
    form = p.get("form") or cfg["form"]
    trained = p.get("train_on") or cfg["train_on"]
    headline = p.get("headline_rule") or cfg["headline"]
    trained = ("the maintain facts and the first half of the edited facts, read on the other half"
               if trained == "maintain+forget_half" else f"the {trained} facts")
    reader = {"classes": f"logistic regression over the answers (C {cfg['C']:g})",
              "pairwise": "a ridge map to the answer embeddings (true answer or edit target)"}.get(form, f"{form} form")
    return f"{reader} on each layer's residual, trained on {trained}; headline: {headline}"


def _softprompt_setting(r: dict) -> str:
    cfg = r["config"]
    return (f"an embedding perturbation bounded at {cfg['max_norm_ratio']:g} x the mean input-embedding norm, "
            f"{cfg['steps']} Adam steps at lr {cfg['lr']:g}, mean over {cfg['restarts']} restart(s), scored on "
            f"{', '.join(cfg['eval_formats'])}")


_ATTACK_DESCRIPTIONS = (("Relearning attack", "relearn", _relearn_setting), ("Probe", "probe", _probe_setting),
                        ("Soft-prompt attack", "softprompt", _softprompt_setting))


def mmlu_at_chance(cells: list[dict]) -> list[str]:
    """Per setting: whether MMLU can show a side effect at all (the unedited model above chance)."""
    parts = []
    for c in sorted((c for c in cells if c["method"] == BASE and c["metrics"].get("mmlu.at_chance") is not None),
                    key=lambda c: (c["setting"], c["seed"])):
        m = c["metrics"]
        if m["mmlu.at_chance"]:
            parts.append(_p(f"{c['setting']}, seed {c['seed']}: the unedited model is at chance on MMLU (accuracy "
                            f"{m['mmlu.acc']:.3f}, chance {m['mmlu.chance']:.3f}, p = {m['mmlu.p_above_chance']:.2g} "
                            "for being above it), so MMLU cannot show a side effect of an edit here.", "lose"))
    return parts


def _size(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"


def comparison(found: list[dict], cells: list[dict], spec: AnalysisSpec) -> list[str]:
    """The primary comparisons' outcomes (one sentence each, or one sentence for a one-seed run),
    their table, and the secondary comparisons as a descriptive table."""
    parts = ["<h2>What the comparison found</h2>"]
    if not found:
        return [*parts, "<p>No comparison of FLU with another localization in this run.</p>"]
    primary = [v for v in found if v["primary"]]
    per_setting = {v["setting"] + (f" [{v['rule']}]" if v["rule"] else ""): v["comparisons"] for v in primary}
    deltas = sorted({f"{v['delta']:g}" for v in primary})
    parts.append(_p(f"Primary comparisons, declared in the run's config before it ran: {spec.describe()}. "
                    f"Per setting: {', '.join(f'{s}: {n}' for s, n in per_setting.items()) or 'none present'}. "
                    f"Smallest difference that matters (delta): {' / '.join(deltas) or f'{spec.delta:g}'}. "
                    f"Rule: {decision_rule(spec)}. A positive difference means FLU did better.", "note"))
    if one_seed_note(found):
        parts.append(_p("One seed: descriptive only (see At a glance).", "lose"))
    elif primary:
        items = [f"<li class={OUTCOME_CLASS[v['outcome']]}><b>{html.escape(v['setting'])}</b>: {html.escape(v['text'])}</li>"
                 for v in primary]
        parts.append("<ul>" + "".join(items) + "</ul>")
    if primary:
        parts.append(table(pd.DataFrame([{
            "setting": v["setting"], "primary endpoint": _metric_label(v["metric"]), "ours": label(v["ours"]),
            "vs": label(v["vs"]), "outcome": v["outcome"] + (f", within ±{v['delta']:g}" if v.get("within_delta") else ""),
            "difference": f"{v['advantage']:+.3f}",
            "corrected interval": _interval(v), "seeds": v["n"], "Holm p, difference": _num(v.get("p_holm")),
            "Holm p, equivalence": _num(v.get("p_equivalence_holm")), "MDE (80% power)": _num(v.get("mde"), ".3f"),
            "seeds for MDE = delta": _seeds(v),
        } for v in primary])))
    parts += rule_sensitivity(found, cells, spec)
    secondary = [v for v in found if not v["primary"]]
    if secondary:
        parts.append("<h3>Secondary comparisons (descriptive)</h3>")
        parts.append(_p("Not part of the corrected family: raw 95% intervals over seeds, no decision.", "note"))
        parts.append(table(pd.DataFrame([{
            "setting": v["setting"], "metric": _metric_label(v["metric"]), "ours": label(v["ours"]),
            "vs": label(v["vs"]), "difference": f"{v['advantage']:+.3f}", "raw 95% interval": _interval(v), "seeds": v["n"],
        } for v in secondary])))
    return parts


RUN_RULE = "the run's rule"


def rule_sensitivity(found: list[dict], cells: list[dict], spec: AnalysisSpec) -> list[str]:
    """Each primary outcome under the run's own FLU rule and under every FLU variant it holds (each
    compared with the arms cut to its own budget), and whether any outcome changes. A variant run on
    fewer seeds than the run's rule is set beside the run's rule judged on those seeds alone, so an
    outcome that moves with the power is not taken for one that moves with the rule."""
    rules = sorted({v["rule"] for v in found if v["primary"]})
    if len(rules) < 2:
        return []
    columns = {RUN_RULE: [v for v in found if v["primary"] and not v["rule"]]}
    baseline = {}  # variant -> the column of the run's rule it is compared with
    by_seeds: dict[tuple, list[str]] = {}  # the variants' seeds per setting, where they differ from the run's
    for rule in rules[1:]:
        columns[rule] = [v for v in found if v["primary"] and v["rule"] == rule]
        seeds = tuple((s, tuple(_seeds_in(columns[rule], s))) for s in sorted({v["setting"] for v in columns[rule]}))
        if all(list(chosen) == _seeds_in(columns[RUN_RULE], s) for s, chosen in seeds):
            baseline[rule] = RUN_RULE
        else:
            by_seeds.setdefault(seeds, []).append(rule)
    for seeds, sharing in by_seeds.items():
        name = f"{RUN_RULE} on the seeds of {', '.join(sharing)}"
        columns[name] = [v for s, chosen in seeds for v in _run_rule_on_seeds(columns[RUN_RULE], cells, spec, s,
                                                                                list(chosen))]
        baseline.update(dict.fromkeys(sharing, name))
    table_rows: dict[tuple, dict] = {}
    for name, found_there in columns.items():
        for v in found_there:
            key = (v["setting"], _metric_label(v["metric"]), label(split_arm(v["vs"])[0]))
            row = table_rows.setdefault(key, {"setting": key[0], "primary endpoint": key[1], "FLU vs": key[2]})
            row[name] = (f"{v['outcome']} ({v['advantage']:+.3f}, MDE {_num(v.get('mde'), '.3f')}, "
                         f"{v['n']} seed{'s' if v['n'] != 1 else ''})")
    pairs = [(row[rule], row[base]) for row in table_rows.values() for rule, base in baseline.items()
             if rule in row and base in row]
    changed = sum(a.split(" ")[0] != b.split(" ")[0] for a, b in pairs)
    return ["<h3>Does the verdict depend on FLU's rule?</h3>",
            _p(f"Each FLU variant is compared with the other methods cut to its own budget, and its outcomes with "
               f"the run's rule on the same seeds. Outcomes that differ from the run's rule: {changed} of the "
               f"{len(pairs)} comparisons made under both.", "lose" if changed else "note"),
            table(pd.DataFrame(list(table_rows.values())).fillna("–"))]


def _seeds_in(rows: list[dict], setting: str) -> list[int]:
    return sorted({seed for v in rows if v["setting"] == setting for seed in v["seeds"]})


def _run_rule_on_seeds(own: list[dict], cells: list[dict], spec: AnalysisSpec, setting: str,
                       seeds: list[int]) -> list[dict]:
    """The primary outcomes of the run's own rule (``own``) in ``setting``, judged on ``seeds`` alone."""
    if _seeds_in(own, setting) == seeds:
        return [v for v in own if v["setting"] == setting]
    chosen = [c for c in cells if c["setting"] == setting and c["seed"] in seeds and not split_arm(c["method"])[1]]
    return [v for v in verdicts(chosen, spec) if v["primary"]]


OUTCOME_CLASS = {"better": "win", "worse": "lose", "equivalent": "tie", "inconclusive": "tie", "descriptive": "tie"}


def _metric_label(name: str) -> str:
    return METRICS[name].label if name in METRICS else name


def _num(value, spec: str = ".2g") -> str:
    return "–" if value is None else format(value, spec)


def _interval(v: dict) -> str:
    if v.get("low") is None or v.get("high") is None:
        return "–"
    return f"{v['low']:+.3f} to {v['high']:+.3f} ({v['confidence']:.1%})"


def _seeds(v: dict) -> str:
    n = v.get("seeds_for_delta")
    if n is None:
        return "–" if v["n"] > 1 or v.get("fact_sd") is None else "more than 10,000"
    text = f">= {n}" if v["n"] < 2 else str(n)
    at64 = v.get("seeds_for_delta_at_64_facts")
    return text + (f" ({at64} at 64 facts)" if at64 is not None else "")


def fairness(cells: list[dict], settings: list[str]) -> list[str]:
    """Steps to the training target and the strength reached per method, the lr and the sweep."""
    parts = ["<h2>How hard each arm was trained</h2>"]
    targets = training.targets_used(cells)
    if targets:
        parts.append(_p(f"Every arm trained until the target ({'; '.join(targets)}) or the step cap. Steps and final "
                        "training strength are means over seeds (min–max); sequential settings sum steps over their "
                        "blocks and average strength. A comparison that involves an arm that missed the target in "
                        "some seed says so.", "note"))
        bands = training.bands_used(cells)
        if bands:
            parts.append(_p(f"An arm whose check landed above the band {' and '.join(bands)} was walked back, by bisection on "
                            "the straight line from the weights of its previous check, into the band, so the arms "
                            "that reached the target end within it.", "note"))
    else:
        parts.append(_p("No training target was recorded: every arm trained for the configured steps, so the arms "
                        "may differ in strength; compare their training-prompt metric below.", "lose"))
    for rule in training.lr_rules(cells):
        parts.append(_p(f"Learning rate per method: {rule}"))
    for setting in settings:
        rows = training.strength_rows(cells, setting)
        rules, sweeps = training.sweep_summary(cells, setting)
        if not rows and not sweeps:
            continue
        parts.append(f"<h3>{html.escape(setting)}</h3>")
        missed = [r["method"] for r in rows if r["not reached in seed"] != "–"]
        if missed:
            parts.append(_p(f"Did not reach the training target in some seed: {', '.join(missed)}.", "lose"))
        if rows:
            parts.append(table(pd.DataFrame(rows)))
        for rule in rules:
            parts.append(_p(f"Hyperparameter sweep rule: {rule}"))
        if sweeps:
            parts.append(table(pd.DataFrame(sweeps)))
    return parts


def _evaluations(cells: list[dict], setting: str | None = None) -> list[dict]:
    return [c["evaluation"] for c in cells if c.get("evaluation") and setting in (None, c["setting"])]


def formats(data: dict, cells: list[dict], settings: list[str]) -> list[str]:
    """The prompt templates and MCQ format of the run (data.json, else what the cells' evaluations
    recorded), the localization-fact rule and the probe's headline layers."""
    parts = ["<h3>Formats and templates</h3>"]
    configs = [e.get("config") or {} for e in _evaluations(cells)]
    mcq = data.get("mcq_format") or ", ".join(sorted({str(c["mcq_format"]) for c in configs if c.get("mcq_format")}))
    parts.append(_p(f"Multiple-choice format: {mcq or NOT_RECORDED}."))
    qa = sorted({str(c["qa_template"]) for c in configs if c.get("qa_template")})
    if qa:
        parts.append(_p(f"Question/answer template: {', '.join(qa)}."))
    if data.get("templates"):
        # the runner writes {setting: {format: text}}; a flat {format: text} holds for every setting
        recorded = data["templates"]
        nested = all(isinstance(v, dict) for v in recorded.values())
        rows = ([{"setting": s, "format": k, "template": v} for s, by_format in recorded.items()
                 for k, v in by_format.items() if s in settings] if nested
                else [{"setting": "all", "format": k, "template": v} for k, v in recorded.items()])
    else:
        rows = sorted({(s, k, v) for s in settings for e in _evaluations(cells, s)
                       for k, v in (e.get("templates") or {}).items()})
        rows = [{"setting": s, "format": k, "template": v} for s, k, v in rows]
    parts.append(table(pd.DataFrame(rows)) if rows else _p(f"Prompt templates: {NOT_RECORDED}."))
    parts.append(_p(f"Localization facts: {data.get('localization_rule') or NOT_RECORDED}."))
    if data.get("qa_example_rule"):
        parts.append(_p(f"Question/answer solved example: {data['qa_example_rule']} (each seed's in data.json, "
                        "qa_examples)."))
    for setting in settings:
        probes = [((e.get("attacks") or {}).get("probe")) for e in _evaluations(cells, setting)]
        probes = [p for p in probes if p]
        if not probes:
            continue
        layers = sorted({_layers(p["headline_layers"]) for p in probes if p.get("headline_layers") is not None})
        rules = sorted({str(p["headline_rule"]) for p in probes if p.get("headline_rule")})
        parts.append(_p(f"Setting {setting}: the latent probe's headline averages layers "
                        f"{' / '.join(layers) or NOT_RECORDED}" + (f" ({'; '.join(rules)})" if rules else "") + "."))
        # the pairwise form (answers that do not repeat) and a probe that could not be fit, in one line each
        for line in sorted({p[k] for p in probes for k in ("form_reason", "skipped") if p.get(k)}):
            parts.append(_p(f"Setting {setting}: {line}."))
    return parts


def _layers(layers: list[int]) -> str:
    """[9, 10, 11, 13] -> '9-11, 13'."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) or "none"


def flu_stability(loc_dir: Path) -> list[str]:
    rows = stability.stability_rows(loc_dir)
    if not rows:
        return []
    parts = ["<h3>FLU's choice over seeds</h3>",
             _p("FLU's MLP layers per seed and the pairwise Jaccard overlap of those sets across seeds "
                "(1 = the same layers every seed).", "note")]
    for rule in stability.flu_rules(loc_dir):
        parts.append(_p(f"FLU's MLP rule: {rule}"))
    return [*parts, table(pd.DataFrame(rows))]
