"""The README's Python API snippet runs exactly as printed, on the embedded model."""

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    match = re.search(r"## The Python API\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md has no '## The Python API' python block"
    return match.group(1)


def test_the_snippet_is_found_and_draws_seeded_samples():
    code = readme_snippet()
    compile(code, "README.md", "exec")
    assert "random.Random(0)" in code and "known.facts[:" not in code


@pytest.mark.integration
def test_readme_python_snippet_runs_as_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    split, loc_facts, report = namespace["split"], namespace["localization_facts"], namespace["report"]
    assert len(loc_facts.count_by_answer()) == 3  # a seeded sample: every sport, not 32 footballers
    edited_or_evaluated = {f.id for part in (split.forget, split.maintain_train, split.maintain_test) for f in part}
    assert not {f.id for f in loc_facts} & edited_or_evaluated
    assert {p.name for p in (tmp_path / "my-edit").iterdir()} == {"model", "diff.safetensors", "train_log.json"}
    p_new = report.aggregates["forget.train.p_new"]
    print(f"README snippet: {namespace['selection'].components}, forget P(edit target) {p_new:.3f}")
    assert p_new > 0.5 and str(round(p_new, 4))[:4] in printed.getvalue()
