"""FLU's stability: the MLP layers it chose in each seed and how much those sets overlap."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from mechunlearn.io import read_json
from mechunlearn.report.methods import OURS

_FILE = re.compile(rf"^(?P<tag>.*){OURS}__s(?P<seed>\d+)\.json$")


def jaccard(a: set, b: set) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def flu_layers(loc_dir: Path) -> dict[str, dict[int, list[int]]]:
    """tag ('' for the shared localization, else the setting/block prefix) -> seed -> FLU's MLP layers."""
    out: dict[str, dict[int, list[int]]] = {}
    for path in sorted(loc_dir.glob(f"*{OURS}__s*.json")):
        match = _FILE.match(path.name)
        layers = read_json(path).get("evidence", {}).get("flu_layers") if match else None
        if layers is not None:
            out.setdefault(match["tag"].removesuffix("__"), {})[int(match["seed"])] = sorted(layers)
    return out


def flu_rules(loc_dir: Path) -> list[str]:
    return sorted({str(r) for p in loc_dir.glob(f"*{OURS}__s*.json") if _FILE.match(p.name)
                   for r in [read_json(p).get("evidence", {}).get("rule")] if r})


def stability_rows(loc_dir: Path) -> list[dict]:
    """One row per localization tag: layers per seed, mean and min pairwise Jaccard over seeds."""
    rows = []
    for tag, by_seed in sorted(flu_layers(loc_dir).items()):
        pairs = [jaccard(set(by_seed[a]), set(by_seed[b])) for a, b in itertools.combinations(sorted(by_seed), 2)]
        rows.append({"localization": tag or "shared by all settings",
                     "MLP layers per seed": "; ".join(f"seed {s}: {', '.join(map(str, by_seed[s])) or 'none'}"
                                                      for s in sorted(by_seed)),
                     "Jaccard mean": sum(pairs) / len(pairs) if pairs else None,
                     "Jaccard min": min(pairs) if pairs else None, "seed pairs": len(pairs)})
    return rows
