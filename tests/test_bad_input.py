"""Every bad input to the command line is one ``error:`` line with exit status 2: no traceback,
no output left behind, no input file changed. The commands run in this process (``invoke``) on a
tiny Llama saved to a temporary folder."""

import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import mechunlearn.cli.common as common
from mechunlearn.cli.app import invoke
from mechunlearn.localize import Localization, Selection
from mechunlearn.models.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

ANSWERS = ("football", "baseball", "basketball")
SUBJECTS = ["Ann Lee", "Bo Chan", "Cy Dunn", "Di Ezra", "Ed Fox", "Flo Gray", "Gus Hill", "Ida Ives", "Jo King",
            "Kim Lowe", "Lu Moss", "Max Nash"]


HEADER = ("id", "subject", "prompt", "target_true", "target_new")


def _table(rows: list[tuple[str, ...]], header=HEADER) -> str:
    return "\n".join([",".join(header), *(",".join(r) for r in rows)]) + "\n"


GOOD_ROWS = [(f"f{i}", s, f"Fact: {s} plays the sport of", ANSWERS[i % 3], "golf") for i, s in enumerate(SUBJECTS)]


def _localization(scores: dict, chosen=(), method="causal_tracing") -> dict:
    return Localization(method, {}, ["f0"], scores, {"granularity": "matrix"}, "tiny", list(chosen)).to_json()


def _write_files(ws: Path) -> None:
    """Every bad input file, beside one good one of each kind."""
    files = {
        "good.csv": _table(GOOD_ROWS),
        "empty.csv": "",
        "header_only.csv": ",".join(HEADER) + "\n",
        "no_answer_column.csv": _table([r[:3] for r in GOOD_ROWS], ("id", "subject", "prompt")),
        "misnamed.csv": _table(GOOD_ROWS, ("id", "subject", "prompt", "target", "target_new")),
        "ragged.csv": _table(GOOD_ROWS[:2]) + "f9,Zed Young\n",
        "trailing_field.csv": _table([(*r, "") for r in GOOD_ROWS]),
        "broken.jsonl": json.dumps({"subject": "Ann Lee", "prompt": "Ann Lee plays", "target_true": "golf"})
        + '\n{"subject": "Bo Chan", "prompt": \n',
        "list_line.jsonl": '["Ann Lee", "Ann Lee plays", "golf"]\n',
        "duplicate_ids.csv": _table([*GOOD_ROWS, ("f1", "Zed Young", "Fact: Zed Young plays the sport of", "golf", "")]),
        "conflict.csv": _table([*GOOD_ROWS, ("f99", "Ann Lee", "Fact: Ann Lee plays the sport of", "golf", "")]),
        "subject_not_in_prompt.csv": _table([*GOOD_ROWS, ("f99", "Zed Young", "Fact: he plays the sport of", "golf", "")]),
        "empty_answer.csv": _table([*GOOD_ROWS, ("f99", "Zed Young", "Fact: Zed Young plays the sport of", "", "")]),
        "space_answer.csv": _table([*GOOD_ROWS, ("f99", "Zed Young", "Fact: Zed Young plays the sport of", "  ", "")]),
        "empty_subject.csv": _table([*GOOD_ROWS, ("f99", " ", "Fact: Zed Young plays the sport of", "golf", "")]),
        "sports_conflict.csv": "athlete,sport\nAnn Lee,football\nBo Chan,baseball\nAnn Lee,basketball\n",
        "sports_unknown.csv": "athlete,sport\nAnn Lee,football\nBo Chan,curling\n",
        "fake.parquet": "this is not parquet\n",
        "cf/counterfact.csv": _table([(r[1], r[2], " " + r[3], " golf") for r in GOOD_ROWS],
                                     ("subject", "prompt", "target_true", "target_false")),
        "cf/counterfact_mc_questions.parquet": "PAR1 but truncated",
        "cf_dupes/counterfact.csv": _table([(str(i % 11), r[1], r[2], " " + r[3], " golf") for i, r in enumerate(GOOD_ROWS)],
                                           ("case_id", "subject", "prompt", "target_true", "target_false")),
        "truncated.json": '{"format": "mechunlearn.localization", "method": "causal',
        "list.json": "[1, 2, 3]",
        "train_log_like.json": json.dumps({"model": "x", "split": {}}),
        "bad_yaml.yaml": "formats: [train, qa\nattacks: []\n",
        "unknown_key.yaml": "formatz: [train]\n",
        "existing_file": "I am a file, not a folder\n",
        "fake.gguf": "definitely not a gguf file",
        "truncated.gguf": b"GGUF\x03\x00\x00\x00\x01".decode("latin-1"),
    }
    for name, text in files.items():
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).write_bytes(text.encode("latin-1") if name.endswith(".gguf") else text.encode())
    (ws / "latin1.csv").write_bytes(_table(GOOD_ROWS).encode() + "f99,Zoë Young,Fact: Zoë Young plays,golf,\n"
                                    .encode("latin-1"))
    (ws / "a_folder").mkdir()
    (ws / "read_only").mkdir()
    (ws / "read_only").chmod(0o555)
    ct = _localization({"blocks.1.mlp.out": 2.0, "blocks.2.mlp.out": 1.0})
    (ws / "ct.json").write_text(json.dumps(ct))
    (ws / "unknown_chosen.json").write_text(json.dumps(_localization({"blocks.1.mlp.out": 1.0},
                                                                     chosen=["blocks.99.mlp.out"])))
    sel = Selection(["blocks.99.mlp.out"], 8192, 8192, "under", "matrix", "causal_tracing").to_json()
    (ws / "unknown_components.selection.json").write_text(json.dumps(sel))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The workspace: a tiny Llama folder, its variants, the data files and one edit's output."""
    ws = tmp_path_factory.mktemp("bad-input")
    lm = tiny_model("llama")
    lm.model.save_pretrained(ws / "model")
    lm.tokenizer.save_pretrained(ws / "model")
    other = tiny_model("llama", seed=1)
    other.model.save_pretrained(ws / "other_model")
    other.tokenizer.save_pretrained(ws / "other_model")
    (ws / "no_config").mkdir()
    shutil.copy(ws / "model" / "model.safetensors", ws / "no_config" / "model.safetensors")
    shutil.copytree(ws / "model", ws / "corrupt_model")
    weights = ws / "corrupt_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(ws / "model", ws / "bin_model")
    (ws / "bin_model" / "model.safetensors").unlink()
    (ws / "bin_model" / "pytorch_model.bin").write_bytes(b"\x80\x02pickled weights would go here")
    _write_files(ws)
    status = invoke(["edit", "--model", str(ws / "model"), "--components", "blocks.1.mlp", "--dataset", "table",
                     "--data", str(ws / "good.csv"), "--threshold", "0", "--forget", "3", "--steps", "2",
                     "--target", "0", "--device", "cpu", "--out", str(ws / "edit")])
    assert status == 0
    _diff_variants(ws)
    yield ws
    (ws / "read_only").chmod(0o755)


def _diff_variants(ws: Path) -> None:
    diff = ws / "edit" / "diff.safetensors"
    (ws / "truncated_diff.safetensors").write_bytes(diff.read_bytes()[:200])
    with safe_open(str(diff), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(ws / "bad_slices.safetensors"), metadata={**metadata, "slices": "[{not json"})


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def M(ws):
    return ["--model", str(ws / "model"), "--device", "cpu"]


def T(ws, name="good.csv"):
    return ["--dataset", "table", "--data", str(ws / name), "--threshold", "0"]


def LOC(ws, *extra):
    return ["localize", "--method", "causal_tracing", *M(ws), *T(ws), "--facts", "4", "--out", str(ws / "loc.json"),
            *extra]


def EDIT(ws, *extra, data="good.csv"):
    return ["edit", *M(ws), *T(ws, data), "--steps", "2", "--target", "0", "--forget", "3", "--out",
            str(ws / "new_edit"), *extra]


def EVAL(ws, *extra):
    return ["evaluate", "--model", str(ws / "edit"), "--device", "cpu", "--formats", "train",
            "--out", str(ws / "eval.json"), *extra]


def FACTS(ws, data, *extra, dataset="table"):
    return ["facts", "known", *M(ws), "--dataset", dataset, "--data", str(ws / data), "--out", str(ws / "k.csv"),
            *extra]


STATE: dict = {}
PROGRESS_BAR = re.compile(r"^(Loading weights|scoring facts): +\d+%\|")

# (id, argv from the workspace, what the one error line must say)
CASES = [
    # fact data
    ("data-missing", lambda ws: FACTS(ws, "nope.csv"), ["no such data file", "nope.csv"]),
    ("data-empty", lambda ws: FACTS(ws, "empty.csv"), ["empty.csv", "is empty"]),
    ("data-header-only", lambda ws: FACTS(ws, "header_only.csv"), ["header_only.csv", "no rows"]),
    ("data-missing-column", lambda ws: FACTS(ws, "no_answer_column.csv"), ["missing column", "'target_true'"]),
    ("data-misnamed-column", lambda ws: FACTS(ws, "misnamed.csv"), ["'target_true'", "is it 'target'"]),
    ("data-latin1", lambda ws: FACTS(ws, "latin1.csv"), ["latin1.csv", "line 14", "not UTF-8"]),
    ("data-ragged-row", lambda ws: FACTS(ws, "ragged.csv"), ["ragged.csv", "line 4", "2 fields", "header has 5"]),
    ("data-trailing-field", lambda ws: FACTS(ws, "trailing_field.csv"), ["line 2", "6 fields", "header has 5"]),
    ("data-broken-jsonl", lambda ws: FACTS(ws, "broken.jsonl"), ["broken.jsonl", "line 2", "not valid JSON"]),
    ("data-jsonl-list-line", lambda ws: FACTS(ws, "list_line.jsonl"), ["line 1", "JSON object"]),
    ("data-duplicate-ids", lambda ws: FACTS(ws, "duplicate_ids.csv"), ["line 14", "'f1'", "line 3", "unique"]),
    ("data-conflicting-subject", lambda ws: FACTS(ws, "conflict.csv"), ["line 14", "'Ann Lee'", "'golf'", "line 2"]),
    ("data-subject-not-in-prompt", lambda ws: FACTS(ws, "subject_not_in_prompt.csv"), ["line 14", "'Zed Young'",
                                                                                      "not in its prompt"]),
    ("data-empty-answer", lambda ws: FACTS(ws, "empty_answer.csv"), ["line 14", "empty 'target_true'"]),
    ("data-whitespace-answer", lambda ws: FACTS(ws, "space_answer.csv"), ["line 14", "empty 'target_true'"]),
    ("data-empty-subject", lambda ws: FACTS(ws, "empty_subject.csv"), ["line 14", "empty 'subject'"]),
    ("sports-conflicting-athlete", lambda ws: FACTS(ws, "sports_conflict.csv", dataset="sports"),
     ["line 4", "'Ann Lee'", "'basketball'", "line 2"]),
    ("sports-unknown-sport", lambda ws: FACTS(ws, "sports_unknown.csv", dataset="sports"), ["line 3", "'curling'"]),
    ("data-fake-parquet", lambda ws: FACTS(ws, "fake.parquet"), ["fake.parquet", "not a readable parquet"]),
    ("counterfact-corrupt-mc-parquet", lambda ws: FACTS(ws, "cf/counterfact.csv", dataset="counterfact"),
     ["counterfact_mc_questions.parquet", "not a readable parquet"]),
    ("counterfact-duplicate-case-ids", lambda ws: FACTS(ws, "cf_dupes/counterfact.csv", dataset="counterfact"),
     ["line 13", "'0'", "line 2"]),
    ("data-unknown-dataset", lambda ws: FACTS(ws, "good.csv", dataset="wikidata"), ["unknown dataset 'wikidata'"]),
    ("data-table-without-data", lambda ws: ["facts", "known", *M(ws), "--dataset", "table"], ["needs --data"]),
    ("facts-out-folder", lambda ws: [*FACTS(ws, "good.csv")[:-2], "--out", str(ws / "a_folder")],
     ["--out", "a_folder", "is a folder"]),
    ("facts-threshold-above-1", lambda ws: [*FACTS(ws, "good.csv"), "--threshold", "1.5"], ["--threshold"]),
    # models
    ("model-missing-path", lambda ws: [*FACTS(ws, "good.csv"), "--model", str(ws / "nope")],
     ["--model", "no such model"]),
    ("model-folder-without-config", lambda ws: [*FACTS(ws, "good.csv"), "--model", str(ws / "no_config")],
     ["no_config", "no config.json"]),
    ("model-corrupt-safetensors", lambda ws: [*FACTS(ws, "good.csv"), "--model", str(ws / "corrupt_model")],
     ["model.safetensors", "not a readable safetensors"]),
    ("model-only-bin", lambda ws: [*FACTS(ws, "good.csv"), "--model", str(ws / "bin_model")],
     ["bin_model", "no .safetensors", "pytorch_model.bin"]),
    ("model-fake-gguf", lambda ws: [*FACTS(ws, "good.csv"), "--model", str(ws / "fake.gguf")],
     ["fake.gguf", "not a GGUF"]),
    ("model-truncated-gguf", lambda ws: [*FACTS(ws, "good.csv"), "--model", str(ws / "truncated.gguf")],
     ["truncated.gguf", "truncated"]),
    ("model-unknown-hub-id-offline", lambda ws: [*FACTS(ws, "good.csv"), "--model", "nobody/no-such-model"],
     ["'nobody/no-such-model'", "offline"]),
    ("device-cuda-7", lambda ws: [*FACTS(ws, "good.csv"), "--device", "cuda:7"], ["cuda:7"]),
    ("device-unknown", lambda ws: [*FACTS(ws, "good.csv"), "--device", "gpu0"], ["'gpu0'"]),
    ("dtype-unknown", lambda ws: [*FACTS(ws, "good.csv"), "--dtype", "float8"], ["--dtype", "'float8'"]),
    # localize
    ("localize-budget-0", lambda ws: LOC(ws, "--budget", "0"), ["--budget", "greater than 0"]),
    ("localize-budget-negative", lambda ws: LOC(ws, "--budget", "-5"), ["--budget", "-5"]),
    ("localize-budget-above-model", lambda ws: LOC(ws, "--budget", "999999999"), ["--budget", "exceeds"]),
    ("localize-match-missing", lambda ws: LOC(ws, "--match", str(ws / "nope.json")), ["no such", "nope.json"]),
    ("localize-match-truncated", lambda ws: LOC(ws, "--match", str(ws / "truncated.json")),
     ["truncated.json", "line 1", "truncated"]),
    ("localize-match-json-list", lambda ws: LOC(ws, "--match", str(ws / "list.json")), ["list.json", "JSON list"]),
    ("localize-match-wrong-kind", lambda ws: LOC(ws, "--match", str(ws / "train_log_like.json")),
     ["train_log_like.json", "not a localization or selection"]),
    ("localize-unknown-granularity", lambda ws: LOC(ws, "--granularity", "atoms"), ["--granularity", "'atoms'"]),
    ("localize-param-not-int", lambda ws: LOC(ws, "--param", "n_noise=abc"), ["n_noise=abc", "expected int"]),
    ("localize-param-unknown", lambda ws: LOC(ws, "--param", "noise=3"), ["noise", "no such parameter"]),
    ("localize-out-folder", lambda ws: [*LOC(ws), "--out", str(ws / "a_folder")], ["a_folder", "is a folder"]),
    ("localize-facts-0", lambda ws: LOC(ws, "--facts", "0"), ["--facts", "at least 1"]),
    ("localize-unknown-method", lambda ws: ["localize", "--method", "magic", "--out", str(ws / "x.json")],
     ["'magic'"]),
    # edit
    ("edit-localization-missing", lambda ws: EDIT(ws, "--localization", str(ws / "nope.json")),
     ["--localization", "nope.json"]),
    ("edit-localization-truncated", lambda ws: EDIT(ws, "--localization", str(ws / "truncated.json")),
     ["truncated.json", "not valid JSON"]),
    ("edit-localization-json-list", lambda ws: EDIT(ws, "--localization", str(ws / "list.json")),
     ["list.json", "JSON list"]),
    ("edit-localization-wrong-kind", lambda ws: EDIT(ws, "--localization", str(ws / "edit" / "train_log.json")),
     ["train_log.json", "not a localization or selection"]),
    ("edit-selection-unknown-components",
     lambda ws: EDIT(ws, "--localization", str(ws / "unknown_components.selection.json")),
     ["unknown_components.selection.json", "blocks.99"]),
    ("edit-localization-unknown-chosen", lambda ws: EDIT(ws, "--localization", str(ws / "unknown_chosen.json")),
     ["unknown_chosen.json", "blocks.99"]),
    ("edit-ranking-without-budget", lambda ws: EDIT(ws, "--localization", str(ws / "ct.json")),
     ["ct.json", "--budget"]),
    ("edit-budget-0", lambda ws: EDIT(ws, "--localization", str(ws / "ct.json"), "--budget", "0"), ["--budget"]),
    ("edit-budget-above-model", lambda ws: EDIT(ws, "--localization", str(ws / "ct.json"), "--budget", "999999999"),
     ["ct.json", "exceeds"]),
    ("edit-unknown-components", lambda ws: EDIT(ws, "--components", "blocks.99.mlp"), ["blocks.99.mlp"]),
    ("edit-forget-0", lambda ws: EDIT(ws, "--components", "blocks.1.mlp", "--forget", "0"), ["--forget"]),
    ("edit-forget-more-than-facts", lambda ws: EDIT(ws, "--components", "blocks.1.mlp", "--forget", "50"),
     ["--forget 50", "12 facts"]),
    ("edit-forget-more-than-known",
     lambda ws: EDIT(ws, "--components", "blocks.1.mlp", "--forget", "8", "--threshold", str(STATE["threshold"])),
     ["--forget 8", "knows only 4"]),
    ("edit-steps-0", lambda ws: EDIT(ws, "--components", "blocks.1.mlp", "--steps", "0"), ["steps"]),
    ("edit-lr-nan", lambda ws: EDIT(ws, "--components", "blocks.1.mlp", "--lr", "nan"), ["lr"]),
    ("edit-unknown-objective", lambda ws: EDIT(ws, "--components", "blocks.1.mlp", "--objective", "forgetify"),
     ["'forgetify'"]),
    ("edit-out-existing-file", lambda ws: [*EDIT(ws, "--components", "blocks.1.mlp"), "--out",
                                           str(ws / "existing_file")], ["existing_file", "is a file"]),
    ("edit-out-read-only-folder", lambda ws: [*EDIT(ws, "--components", "blocks.1.mlp"), "--out",
                                              str(ws / "read_only" / "out")], ["read_only", "read-only"]),
    ("edit-out-in-model-folder", lambda ws: [*EDIT(ws, "--components", "blocks.1.mlp"), "--out",
                                             str(ws / "model" / "edited")], ["base model's files"]),
    ("edit-category-without-category", lambda ws: EDIT(ws, "--components", "blocks.1.mlp", "--mode", "category"),
     ["--category"]),
    ("edit-new-target-equals-category", lambda ws: EDIT(ws, "--components", "blocks.1.mlp", "--mode", "category",
                                                        "--category", "football", "--new-target", "football"),
     ["--new-target", "equals --category"]),
    ("edit-unknown-category", lambda ws: EDIT(ws, "--components", "blocks.1.mlp", "--mode", "category",
                                              "--category", "chess"), ["'chess'", "football"]),
    ("edit-unknown-mode", lambda ws: EDIT(ws, "--components", "blocks.1.mlp", "--mode", "sideways"), ["'sideways'"]),
    ("edit-bad-data", lambda ws: EDIT(ws, "--components", "blocks.1.mlp", data="ragged.csv"), ["ragged.csv"]),
    ("edit-general-text-missing", lambda ws: EDIT(ws, "--components", "blocks.1.mlp", "--general-text",
                                                  str(ws / "nope.txt")), ["--general-text", "nope.txt"]),
    ("edit-steps-not-a-number", lambda ws: EDIT(ws, "--components", "blocks.1.mlp", "--steps", "ten"), ["--steps"]),
    # apply-diff
    ("apply-diff-other-model", lambda ws: ["apply-diff", str(ws / "edit"), "--model", str(ws / "other_model"),
                                           "--out", str(ws / "rebuilt")], ["other base weights"]),
    ("apply-diff-truncated", lambda ws: ["apply-diff", str(ws / "truncated_diff.safetensors"), "--out",
                                         str(ws / "rebuilt")], ["truncated_diff.safetensors", "not a safetensors"]),
    ("apply-diff-slices-not-json", lambda ws: ["apply-diff", str(ws / "bad_slices.safetensors"), "--out",
                                               str(ws / "rebuilt")], ["bad_slices.safetensors", "'slices'"]),
    ("apply-diff-missing", lambda ws: ["apply-diff", str(ws / "nope.safetensors"), "--out", str(ws / "rebuilt")],
     ["no such diff file"]),
    ("apply-diff-out-existing-file", lambda ws: ["apply-diff", str(ws / "edit"), "--out", str(ws / "existing_file")],
     ["existing_file", "is a file"]),
    ("apply-diff-not-a-diff", lambda ws: ["apply-diff", str(ws / "model" / "model.safetensors"), "--out",
                                          str(ws / "rebuilt")], ["not a mechunlearn diff"]),
    # evaluate
    ("evaluate-log-missing", lambda ws: EVAL(ws, "--forget-from", str(ws / "missing" / "train_log.json")),
     ["no such training log", "missing/train_log.json"]),
    ("evaluate-log-truncated", lambda ws: EVAL(ws, "--forget-from", str(ws / "truncated.json")),
     ["truncated.json", "not valid JSON"]),
    ("evaluate-log-wrong-kind", lambda ws: EVAL(ws, "--forget-from", str(ws / "list.json")),
     ["list.json", "not a training log"]),
    ("evaluate-unknown-format", lambda ws: EVAL(ws, "--formats", "train,haiku"), ["'haiku'"]),
    ("evaluate-unknown-attack", lambda ws: EVAL(ws, "--attacks", "jailbreak"), ["'jailbreak'"]),
    ("evaluate-model-missing", lambda ws: [*EVAL(ws), "--model", str(ws / "nope")], ["--model", "nope"]),
    ("evaluate-base-missing", lambda ws: EVAL(ws, "--base", str(ws / "nope")), ["--base", "nope"]),
    ("evaluate-config-yaml-error", lambda ws: EVAL(ws, "--config", str(ws / "bad_yaml.yaml")),
     ["bad_yaml.yaml", "YAML syntax error", "line"]),
    ("evaluate-config-unknown-key", lambda ws: EVAL(ws, "--config", str(ws / "unknown_key.yaml")), ["formatz"]),
    ("evaluate-config-missing", lambda ws: EVAL(ws, "--config", str(ws / "nope.yaml")), ["--config", "nope.yaml"]),
    ("evaluate-mmlu-missing", lambda ws: EVAL(ws, "--mmlu", str(ws / "mmlu.csv")), ["--mmlu", "mmlu.csv"]),
    ("evaluate-general-text-missing", lambda ws: EVAL(ws, "--general-text", str(ws / "nope.txt")),
     ["--general-text", "nope.txt"]),
    ("evaluate-out-folder", lambda ws: [*EVAL(ws), "--out", str(ws / "a_folder")], ["a_folder", "is a folder"]),
    # demo
    ("demo-out-existing-file", lambda ws: ["demo", "--out", str(ws / "existing_file")], ["existing_file", "is a file"]),
]


@pytest.fixture(scope="module")
def known_threshold(ws):
    """A threshold at which the tiny model knows exactly 4 of the 12 good facts."""
    from mechunlearn.facts import answer_probs, load_table

    lm = tiny_model("llama")
    p_true, _ = answer_probs(lm.model, lm.tokenizer, load_table(ws / "good.csv"))
    ranked = sorted(p_true.tolist(), reverse=True)
    return (ranked[3] + ranked[4]) / 2


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(case, ws, known_threshold, capsys, monkeypatch):
    name, argv, expected = case
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if os.geteuid() == 0:  # root writes anywhere: make the read-only folder read-only to the check
        real_access = os.access
        monkeypatch.setattr(common.os, "access", lambda p, mode: False if "read_only" in str(p) and mode & os.W_OK
                            else real_access(p, mode))
    if name == "device-cuda-7" and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    STATE["threshold"] = known_threshold
    before = _snapshot(ws)
    capsys.readouterr()
    status = invoke(argv(ws))
    out, err = capsys.readouterr()
    # a model's loading progress bar may come before the error (cases that need the model)
    lines = [line for line in (out + err).splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert status == 2, (out, err)
    assert "Traceback" not in out + err
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert _snapshot(ws) == before  # nothing written, nothing changed


def test_the_suite_feeds_at_least_40_bad_inputs():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


def test_edit_takes_a_ranking_localization_that_records_its_budget(ws, tmp_path, capsys):
    """``localize --method causal_tracing --match flu.json`` records the budget it was cut to:
    ``edit --localization`` on that file trains the same cut (was: refused)."""
    loc = Localization.from_json(json.loads((ws / "ct.json").read_text()))
    loc.evidence["selection"] = {"budget": 8192, "rule": "under", "granularity": "matrix", "match": "flu.json"}
    loc.save(tmp_path / "ct.json")
    status = invoke(EDIT(ws, "--localization", str(tmp_path / "ct.json"), "--out", str(tmp_path / "e")))
    assert status == 0, capsys.readouterr()
    log = json.loads((tmp_path / "e" / "train_log.json").read_text())
    assert log["components"] == ["blocks.1.mlp.out"] and log["n_trained_params"] == 8192


def test_gguf_header_without_tensors_is_refused(tmp_path):
    from mechunlearn.errors import ModelLoadError
    from mechunlearn.models.loading import load_model

    path = tmp_path / "empty.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    with pytest.raises(ModelLoadError, match="empty.gguf"):
        load_model(str(path))


def test_facts_known_writes_every_p_true_and_says_why_few_are_known(ws, tmp_path, capsys):
    """A random tiny model knows none of the facts at 0.5: the CSV still lists every fact's
    P(true), and the message names the likely cause and the remedies."""
    out = tmp_path / "known.csv"
    status = invoke(["facts", "known", *M(ws), "--dataset", "table", "--data", str(ws / "good.csv"), "--out", str(out)])
    printed = " ".join(capsys.readouterr().err.split())
    assert status == 0, printed
    rows = pd.read_csv(out)
    assert list(rows.id) == [r[0] for r in GOOD_ROWS] and not rows.known.any()
    assert ((rows.p_true > 0) & (rows.p_true < 0.5)).all()
    assert "few facts known: 0 of 12" in printed and "solved example" in printed and "--threshold" in printed

    status = invoke(["facts", "known", *M(ws), *T(ws), "--out", str(out)])  # threshold 0: all known, no warning
    printed = " ".join(capsys.readouterr().err.split())
    assert status == 0 and pd.read_csv(out).known.all() and "few facts known" not in printed
