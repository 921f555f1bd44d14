"""Every command of the README's "The command line" block, from a clone: the cheap ones run as
printed on a tiny model (``--model``/``--base default`` name it; ``--threshold 0`` because a random
model knows no fact), the published data read from where the README tells users to put it (here:
the reference copy beside the project), the GPU-sized paper runs as ``--dry-run``; the rest are
skipped, each with its reason."""

import json
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from mechunlearn.cli.app import invoke
from mechunlearn.facts import load_facts
from mechunlearn.models.tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"  # the published tables, read by path, never copied
README_DATA = "~/mechunlearn-data"  # where the README's "Getting the published data" puts them

SKIPPED = {  # command prefix -> why it is not run here
    "mechunlearn run my-experiment.yaml": "the user's own config: none ships with the repository",
    "mechunlearn demo": "about 15 minutes on the embedded model (tests/test_demo.py runs --quick)",
    "mechunlearn report runs/exp1": "needs the finished run of 'run my-experiment.yaml'",
    "mechunlearn plan runs/exp1": "needs the finished pilot run of 'run my-experiment.yaml'",
}
LOADS_A_MODEL = ("facts known", "localize", "edit")  # these take --model (default: the embedded model)

pytestmark = pytest.mark.usefixtures("one_thread")


def readme_commands() -> list[str]:
    match = re.search(r"## The command line\n\n```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert match, "README.md has no '## The command line' bash block"
    lines = [line.split("#")[0].strip() for line in match.group(1).replace("\\\n", " ").splitlines()]
    return [" ".join(line.split()) for line in lines if line]


def _as_run_here(command: str, model: Path) -> list[str]:
    """The README's command with the tiny model and the reference data in place of the user's."""
    command = command.replace(README_DATA, str(SHARED))
    command = command.replace("--model default", f"--model {model}").replace("--base default", f"--base {model}")
    args = shlex.split(command)[1:]
    sub = " ".join(args[:2])
    if any(sub.startswith(c) for c in LOADS_A_MODEL):
        args += [] if "--model" in args else ["--model", str(model)]
        args += ["--threshold", "0"]
    if args[:2] == ["run", "paper"]:
        args.append("--dry-run")  # GPU-sized: the plan and its memory estimate, not the run
    return args


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    commands = readme_commands()
    assert len(commands) >= 14 and commands[0] == "mechunlearn --help"
    assert all(c.startswith("mechunlearn ") for c in commands)
    assert not [c for c in commands if "shared/data" in c]  # a clone has no ../shared
    for prefix in SKIPPED:
        assert any(c.startswith(prefix) for c in commands), f"{prefix!r} is no longer in the README"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the published tables are not at {SHARED}")
def test_readme_commands_run_from_a_clone(tmp_path, monkeypatch, capsys):
    model = tmp_path / "tiny-llama"
    lm = tiny_model("llama", n_layers=4)
    lm.model.save_pretrained(model)
    lm.tokenizer.save_pretrained(model)
    work = tmp_path / "clone"
    work.mkdir()
    monkeypatch.chdir(work)
    ran, skipped, known_csv = [], [], []
    for command in readme_commands():
        reason = next((why for prefix, why in SKIPPED.items() if command.startswith(prefix)), None)
        if reason:
            skipped.append((command, reason))
            continue
        capsys.readouterr()
        status = invoke(_as_run_here(command, model))
        output = capsys.readouterr()
        assert status == 0, f"{command}\n{output.out}\n{output.err}"
        ran.append((command, output.out + output.err))
        if command.startswith("mechunlearn facts known"):  # both write known.csv: read it before the next
            table = pd.read_csv("known.csv")
            known_csv.append((len(table), int(table["known"].sum())))
    print("\n".join(f"skipped: {c} ({why})" for c, why in skipped))

    outputs = dict(ran)
    assert "localize" in outputs["mechunlearn --help"] and "evaluate" in outputs["mechunlearn --help"]
    builtin = len(load_facts("sports"))
    assert known_csv == [(builtin, builtin), (1559, 1559)]  # the built-in athletes, then the published list
    flu, ct = (json.loads(Path(name).read_text()) for name in ("flu.json", "ct.json"))
    assert len(flu["fact_ids"]) == len(ct["fact_ids"]) == 32 and flu["chosen"]
    assert json.loads(Path("ct.selection.json").read_text())["rule"] == "within"
    for folder in ("edits/flu", "edits/flu-unlearn"):
        assert {p.name for p in Path(folder).iterdir()} >= {"model", "diff.safetensors", "train_log.json"}
    assert len(json.loads(Path("edits/flu/train_log.json").read_text())["split"]["forget"]) == 16
    rebuilt, edited = load_file(next(Path("rebuilt").glob("*.safetensors"))), \
        load_file(next(Path("edits/flu/model").glob("*.safetensors")))
    assert rebuilt.keys() == edited.keys() and all((rebuilt[k] == edited[k]).all() for k in edited)
    evaluation = json.loads(Path("eval.json").read_text())
    assert {"relearn.error", "probe.truth", "softprompt.error"} <= set(evaluation["aggregates"])
    assert sum("run paper" in c for c, _ in ran) == 3 and len(skipped) == len(SKIPPED)
