"""One evaluation of one model on one split: formats, side effects and attacks, as a single
JSON-able dict with flat ``aggregates`` and per-fact ``rows``; and the comparison of an edited
model with its unedited base, so that every number has its "before"."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import pandas as pd

from mechunlearn.evaluate.attacks.registry import ATTACKS
from mechunlearn.evaluate.config import EvalConfig, check_names
from mechunlearn.evaluate.formats import FORMATS, format_templates
from mechunlearn.evaluate.headline import headline
from mechunlearn.evaluate.metrics import evaluate_facts
from mechunlearn.evaluate.result import EvaluationResult
from mechunlearn.evaluate.side_effects import side_effects
from mechunlearn.facts import Split
from mechunlearn.io import write_json_atomic, write_text_atomic
from mechunlearn.models.loading import LoadedModel
from mechunlearn.profiling import stage

ROW_COLUMNS = ["model", "set", "format", "id", "p_true", "p_new", "correct", "edited", "n_prompts", "options"]


def _rows(result: EvaluationResult) -> list[dict]:
    rows = [{"set": "forget", **r} for r in result.forget["rows"]]
    rows += [{"set": "maintain", **r} for r in result.side_effects["maintain"]["rows"]]
    return rows


def evaluate_run(
    lm: LoadedModel,
    split: Split,
    formats: Sequence[str] | None = None,
    attacks: Sequence[str] | None = None,
    config: EvalConfig | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Everything for one model: the edited facts (``split.forget_eval``) and the held-out
    maintain facts in each format, LM loss, MMLU (when a file is configured) and the attacks.
    ``formats``/``attacks`` override the config's."""
    config = config or EvalConfig()
    formats = tuple(formats) if formats is not None else config.formats
    attacks = tuple(attacks) if attacks is not None else config.attacks
    check_names(formats, FORMATS, "format")
    check_names(attacks, ATTACKS, "attack")
    start = time.perf_counter()
    with stage("formats"):
        forget = evaluate_facts(lm, split.forget_eval, formats, seed=config.seed, batch_size=config.batch_size,
                                progress=progress, style=config.style)
    with stage("side effects"):
        effects = side_effects(
            lm, split, config.general_text, config.mmlu_path, formats, config.seed, config.mmlu_shots,
            config.mmlu_limit, config.lm_windows, config.lm_window_length, config.batch_size, progress,
            style=config.style, mmlu_per_subject=config.mmlu_per_subject,
        )
    attack_results = {}
    for name, attack in ATTACKS.items():
        if name in attacks:
            with stage(attack.stage) if attack.stage else nullcontext():
                attack_results[name] = attack.run(lm, split, config.attack_config(name), progress)
    result = EvaluationResult(
        model=lm.spec,
        source=lm.source,
        config={**config.to_json(), "formats": list(formats), "attacks": list(attacks)},
        templates=format_templates(split.forget_eval, formats, config.style),
        seeds={"evaluation": config.seed, "split": split.seed,
               **{name: config.attack_config(name).seed for name in ATTACKS}},
        facts={"name": split.forget_eval.name, "source": split.forget_eval.source,
               "notes": list(split.forget_eval.notes), "closed_answers": split.forget_eval.answers},
        split={**split.to_json(), "sizes": split.sizes()},
        forget=forget.to_json(),
        side_effects=effects,
        attacks=attack_results,
    )
    result.aggregates = headline(result.forget, result.side_effects, result.attacks)
    result.rows = _rows(result)
    result.seconds = time.perf_counter() - start
    return result


def compare_runs(base: EvaluationResult | None, edited: EvaluationResult) -> dict:
    """The edited model's results beside its unedited base: ``aggregates[name] = {"base",
    "edited", "delta"}``, the rows of both (column ``model``), and both full results. Without
    a base (``None``) the base values are null."""
    base_aggs = base.aggregates if base else {}
    names = list(dict.fromkeys([*base_aggs, *edited.aggregates]))
    aggregates = {}
    for name in names:
        b, e = base_aggs.get(name), edited.aggregates.get(name)
        delta = e - b if isinstance(b, int | float) and isinstance(e, int | float) else None
        aggregates[name] = {"base": b, "edited": e, "delta": delta}
    rows = [{"model": "base", **r} for r in (base.rows if base else [])]
    rows += [{"model": "edited", **r} for r in edited.rows]
    return {"aggregates": aggregates, "rows": rows, "base": base.to_json() if base else None,
            "edited": edited.to_json()}


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    return frame[[c for c in ROW_COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in ROW_COLUMNS]]


def write_results(result: dict, out: str | Path, csv: str | Path | None = None) -> tuple[Path, Path]:
    """Write the JSON and the per-fact CSV (default: beside the JSON, ``.csv``), atomically."""
    out = Path(out)
    csv = Path(csv) if csv else out.with_suffix(".csv")
    write_json_atomic(out, _clean(result))
    write_text_atomic(csv, rows_frame(result["rows"]).to_csv(index=False))
    return out, csv


def _clean(value):
    """NaN/inf become null, so the JSON is strict."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
