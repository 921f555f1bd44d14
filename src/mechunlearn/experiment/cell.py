"""One cell of a run: a method's arm (or the unedited model) in one setting and seed, trained and
evaluated; ``cells/{setting}__{method}__s{seed}.json`` in the run folder."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path

from mechunlearn.errors import MechunlearnError
from mechunlearn.io import read_json

REQUIRED = ("setting", "method", "seed", "metrics", "n_params")  # what every version of a cell holds


@dataclass
class Cell:
    setting: str
    method: str
    seed: int
    objective: str
    n_params: int  # trained parameters (0: the unedited model)
    budget: dict | None  # the arm's budget against the one it is matched to (localizations.budget_record)
    components: list[str]
    metrics: dict[str, float | None]  # the flat numbers that judge the setting's objective
    curves: dict[str, list[list[float]]]
    train: dict  # the training record (empty for the unedited model)
    evaluation: dict  # the whole evaluation (evaluate_run)
    seconds: float
    code: str | None = None  # code_fingerprint() of the code that computed it (None: an older version's cell)
    extra: dict = field(default_factory=dict)  # keys a later version added, kept as read

    def to_json(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}, **self.extra}

    @classmethod
    def from_json(cls, data: dict, where: str = "cell") -> Cell:
        if not isinstance(data, dict) or not all(k in data for k in REQUIRED):
            raise MechunlearnError(f"{where} lacks the keys of a cell {list(REQUIRED)}; rerun the run to compute it "
                                   "again")
        names = [f.name for f in fields(cls) if f.name != "extra"]
        return cls(**{n: data.get(n) for n in names}, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def read(cls, path: Path) -> Cell:
        """A finished cell; an unreadable or incomplete one is named."""
        try:
            data = read_json(path)
        except (OSError, ValueError) as e:
            raise MechunlearnError(f"cell {path} cannot be read ({e}); rerun the run to compute it again") from None
        return cls.from_json(data, f"cell {path}")


@cache
def code_fingerprint() -> str:
    """A hash of the package's source files: two cells computed by the same code carry the same one."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
