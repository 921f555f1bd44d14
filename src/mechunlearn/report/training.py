"""How hard each arm was trained: steps to the training target, the strength reached, the
learning rate and the sweep that chose it, read from each cell's ``train`` record."""

from __future__ import annotations

from mechunlearn.report.methods import BASE, label, ordered
from mechunlearn.report.stats import estimate


def target_blocks(cell: dict) -> list[dict]:
    """One target record per trained block (sequential settings have several); [] without a target."""
    target = (cell.get("train") or {}).get("target")
    if not target:
        return []
    return [target] if isinstance(target, dict) else list(target)


def seed_strength(cell: dict) -> dict | None:
    """A seed's total steps over its blocks, mean strength over blocks and whether every block reached."""
    blocks = target_blocks(cell)
    if not blocks:
        return None
    return {"steps": sum(b["steps"] for b in blocks), "strength": sum(b["strength"] for b in blocks) / len(blocks),
            "reached": all(b["reached"] for b in blocks), "blocks": len(blocks),
            "missed_blocks": [i + 1 for i, b in enumerate(blocks) if not b["reached"]]}


def unreached_seeds(cells: list[dict]) -> dict[tuple[str, str], list[int]]:
    """(setting, method) -> the seeds in which some block stopped short of the training target."""
    out: dict[tuple[str, str], list[int]] = {}
    for c in cells:
        s = seed_strength(c)
        if s is not None and not s["reached"]:
            out.setdefault((c["setting"], c["method"]), []).append(c["seed"])
    return {k: sorted(v) for k, v in out.items()}


def _range(values: list[float], fmt: str) -> str:
    e = estimate(values)
    if e.n == 0:
        return "–"
    return format(e.mean, fmt) if e.n == 1 else f"{format(e.mean, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def _lr(cell: dict) -> float | None:
    train = cell.get("train") or {}
    return train.get("lr", (train.get("config") or {}).get("lr"))


def strength_rows(cells: list[dict], setting: str) -> list[dict]:
    """One row per trained method of ``setting``: steps to target and final training strength
    (mean over seeds, min–max), and the seeds (blocks) that did not reach the target."""
    rows = []
    sub = [c for c in cells if c["setting"] == setting and c["method"] != BASE]
    ladder = any((c.get("train") or {}).get("lr_rule") for c in sub)
    for method in ordered({c["method"] for c in sub}):
        mine = sorted((c for c in sub if c["method"] == method), key=lambda c: c["seed"])
        per_seed = [(c["seed"], seed_strength(c)) for c in mine]
        got = [(seed, s) for seed, s in per_seed if s is not None]
        if not got:
            continue
        missed = [f"{seed}" + (f" (block {', '.join(map(str, s['missed_blocks']))})" if s["blocks"] > 1 else "")
                  for seed, s in got if not s["reached"]]
        lrs = sorted({lr for lr in map(_lr, mine) if lr is not None})
        rows.append({"method": label(method), "seeds": len(got),
                     "steps to target": _range([s["steps"] for _, s in got], ".0f"),
                     "final training strength": _range([s["strength"] for _, s in got], ".3f"),
                     "reached target": f"{len(got) - len(missed)}/{len(got)}",
                     "not reached in seed": ", ".join(missed) or "–",
                     "lr": ", ".join(f"{lr:g}" for lr in lrs) or "–"})
        if any("band" in b for c in mine for b in target_blocks(c)):
            rows[-1]["walked back into the band (seed: from → to)"] = "; ".join(
                f"{c['seed']}: {b['last_stretch']['overshoot']:.3f} → {b['strength']:.3f}"
                for c in mine for b in target_blocks(c) if b.get("last_stretch")) or "–"
        if ladder:
            rows[-1]["missed at the configured lr, trained again (seed)"] = "; ".join(
                f"{c['seed']}: {fa['strength']:.3f} after {fa['steps']} steps at lr {fa['lr']:g}"
                + (f" (missed in block {', '.join(map(str, fa['missed_blocks']))})" if fa.get("missed_blocks") else "")
                for c in mine if (fa := c["train"].get("first_attempt"))) or "–"
    return rows


def targets_used(cells: list[dict]) -> list[str]:
    """Each distinct (target, measure) statement, e.g. '0.9 on mean P(edit target), training prompts'."""
    seen = {(b.get("target"), b.get("measure")) for c in cells for b in target_blocks(c)}
    return [f"{t} on {m}" if m else f"{t}" for t, m in sorted(seen, key=str)]


def bands_used(cells: list[dict]) -> list[str]:
    """Each distinct target band, e.g. '[0.9, 0.95]'."""
    seen = {(b["target"], b["band"]) for c in cells for b in target_blocks(c) if b.get("band")}
    return [f"[{t:g}, {t + band:g}]" for t, band in sorted(seen)]


def lr_rules(cells: list[dict]) -> list[str]:
    return sorted({str(c["train"]["lr_rule"]) for c in cells if (c.get("train") or {}).get("lr_rule")})


def sweep_summary(cells: list[dict], setting: str) -> tuple[list[str], list[dict]]:
    """The sweep rules stated by ``setting``'s cells, and per method what the sweep chose in each seed."""
    rules, rows = set(), []
    sub = [c for c in cells if c["setting"] == setting and (c.get("train") or {}).get("sweep")]
    for method in ordered({c["method"] for c in sub}):
        mine = sorted((c for c in sub if c["method"] == method), key=lambda c: c["seed"])
        sweeps = [c["train"]["sweep"] for c in mine]
        rules |= {str(s["rule"]) for s in sweeps if s.get("rule")}
        rows.append({"method": label(method),
                     "chosen per seed": "; ".join(f"seed {c['seed']}: {_chosen(s.get('chosen'))}"
                                                  for c, s in zip(mine, sweeps, strict=True)),
                     "trials": ", ".join(sorted({str(len(s.get("trials") or [])) for s in sweeps})),
                     "validation facts": ", ".join(sorted({str(s.get("n_val", "–")) for s in sweeps}))})
    return sorted(rules), rows


def _chosen(values: dict | None) -> str:
    """{"lr": 0.001, "steps": 30} -> 'lr 0.001, steps 30'."""
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in (values or {}).items()) or "–"
