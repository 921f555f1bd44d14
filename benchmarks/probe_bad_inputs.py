"""Feed the command line bad inputs, one subprocess each, and classify what it does with each:
``refused`` (exit 2, one ``error:`` line, no traceback), ``traceback``, ``accepted`` (exit 0),
``other`` (another exit or a message of several lines), ``timeout``; and whether it wrote or
changed anything in the workspace. Runs on a tiny random Llama (no embedded model, no network).

    python benchmarks/probe_bad_inputs.py [--timeout 120] [--only SUBSTRING] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ANSWERS = ("football", "baseball", "basketball")
SUBJECTS = ["Ann Lee", "Bo Chan", "Cy Dunn", "Di Ezra", "Ed Fox", "Flo Gray", "Gus Hill", "Ida Ives", "Jo King",
            "Kim Lowe", "Lu Moss", "Max Nash"]


def workspace(ws: Path) -> None:
    from mechunlearn.localize import Localization
    from mechunlearn.localize.base import _model_info
    from mechunlearn.models.tiny import tiny_model

    lm = tiny_model("llama")
    lm.model.save_pretrained(ws / "model")
    lm.tokenizer.save_pretrained(ws / "model")
    rows = [f"f{i},{s},Fact: {s} plays the sport of,{ANSWERS[i % 3]},golf" for i, s in enumerate(SUBJECTS)]
    header = "id,subject,prompt,target_true,target_new"
    files = {
        "good.csv": "\n".join([header, *rows]) + "\n",
        "empty.csv": "",
        "header_only.csv": header + "\n",
        "ragged.csv": "\n".join([header, rows[0], "f9,Zed"]) + "\n",
        "same.csv": "\n".join([header, *[r.rsplit(",", 1)[0] + "," + r.split(",")[3] for r in rows]]) + "\n",
        "cf_escape.csv": "subject,prompt,target_true,target_false,paraphrase_prompts\n"
                         "Ann Lee,Ann Lee plays,golf,tennis,\"['a\\N b']\"\n",
        "cf_unclosed.csv": "subject,prompt,target_true,target_false,paraphrase_prompts\n"
                           "Ann Lee,Ann Lee plays,golf,tennis,\"['a b'\"\n",
        "truncated.json": '{"format": "mechunlearn.localization"',
        "list.json": "[1, 2]",
        "notes.txt": "the user's own file\n",
        "empty.yaml": "",
        "dup.yaml": "seeds: [0]\nseeds: [1]\n",
        "param.yaml": "localization:\n  params:\n    fact_lookup:\n      relativ: 0.5\n",
        "thr.yaml": "facts:\n  threshold: 1.5\n",
        "limit.yaml": "facts:\n  limit: -5\n",
        "forget.yaml": "settings:\n  - name: a\n    forget: 1000000000000\n",
        "category.yaml": "settings:\n  - name: a\n    category: chess\n",
        "unknown_key.yaml": "seedz: [0]\n",
        "bad.yaml": "seeds: [0\n",
        "list.yaml": "- 1\n- 2\n",
        "methods_empty.yaml": "localization:\n  methods: []\n",
        "objective.yaml": "settings:\n  - name: a\n    objective: forgetify\n",
        "lr_text.yaml": "training:\n  default:\n    lr: 1e-4\n",
    }
    for name, text in files.items():
        (ws / name).write_text(text)
    (ws / "user_folder").mkdir()
    (ws / "user_folder" / "mine.txt").write_text("mine\n")
    other = {**_model_info(tiny_model("gemma2")), "n_layers": 26}
    for name, scores, model in (("foreign.json", {"blocks.1.mlp.out": 1.0}, other),
                                ("nan.json", {"blocks.1.mlp.out": float("nan")}, None)):
        evidence = {"granularity": "matrix", **({"model": model} if model else {})}
        Localization("causal_tracing", {}, ["f0"], scores, evidence, "tiny", []).save(ws / name)
    mamba = ws / "mamba"
    mamba.mkdir()
    for p in (ws / "model").iterdir():
        (mamba / p.name).write_bytes(p.read_bytes())
    config = json.loads((mamba / "config.json").read_text())
    (mamba / "config.json").write_text(json.dumps({**config, "model_type": "mamba9"}))


def cases(ws: Path) -> list[tuple[str, list[str]]]:
    m = ["--model", str(ws / "model"), "--device", "cpu"]
    t = ["--dataset", "table", "--data", str(ws / "good.csv"), "--threshold", "0"]
    edit = ["edit", *m, *t, "--components", "blocks.1.mlp", "--forget", "3", "--steps", "2", "--target", "0",
            "--out", str(ws / "out_edit")]
    loc = ["localize", "--method", "random", *m, *t, "--facts", "2", "--out", str(ws / "out_loc.json")]
    known = ["facts", "known", *m, *t, "--out", str(ws / "out_known.csv")]
    ev = ["evaluate", *m[2:], "--model", str(ws / "model"), *t, "--forget", "3", "--formats", "train",
          "--out", str(ws / "out_eval.json")]
    out: list[tuple[str, list[str]]] = []
    numbers = ["nan", "inf", "-inf", "-1", "0", "1e12", "abc", "", str(2**64)]
    for option in ("--lr", "--steps", "--target", "--target-band", "--c-forget", "--c-maintain", "--c-general",
                   "--forget", "--seed", "--check-every", "--grad-clip", "--warmup", "--forget-batch",
                   "--general-length", "--mask-l1"):
        for value in numbers:
            if value in ("0", "-1") and option in ("--c-forget", "--c-general", "--warmup", "--grad-clip", "--target"):
                continue  # a 0 there is meaningful
            out.append((f"edit {option} {value!r}", [*edit, option, value]))
    for option, value in (("--threshold", "1.5"), ("--threshold", "nan"), ("--seed", str(2**64)),
                          ("--dtype", "int4"), ("--device", "tpu"), ("--model", ""), ("--model", str(ws / "mamba")),
                          ("--data", str(ws / "empty.csv")), ("--data", str(ws / "ragged.csv")),
                          ("--data", str(ws / "nope.csv")), ("--out", str(ws / "user_folder")),
                          ("--out", "/proc/x"), ("--dataset", "wikidata"), ("--relation", "capital")):
        out.append((f"facts known {option} {value!r}", [*known, option, value]))
    out += [("facts known counterfact \\N", ["facts", "known", *m, "--dataset", "counterfact", "--data",
                                             str(ws / "cf_escape.csv"), "--out", str(ws / "k.csv")]),
            ("facts known counterfact unclosed", ["facts", "known", *m, "--dataset", "counterfact", "--data",
                                                  str(ws / "cf_unclosed.csv"), "--out", str(ws / "k.csv")])]
    for option, value in (("--method", "magic"), ("--facts", "0"), ("--facts", "-3"), ("--budget", "0"),
                          ("--budget", "-1"), ("--budget", "1e12"), ("--granularity", "atoms"),
                          ("--param", "noise=3"), ("--param", "n_noise=abc"), ("--match", str(ws / "nope.json")),
                          ("--match", str(ws / "truncated.json")), ("--match", str(ws / "list.json")),
                          ("--out", str(ws / "user_folder")), ("--out", "/proc/x.json"), ("--seed", "-1"),
                          ("--threshold", "2"), ("--model", ""), ("--model", str(ws / "mamba"))):
        out.append((f"localize {option} {value!r}", [*loc, option, value]))
    for option, value in (("--localization", str(ws / "foreign.json")), ("--localization", str(ws / "nan.json")),
                          ("--localization", str(ws / "truncated.json")), ("--localization", str(ws / "list.json")),
                          ("--components", ""), ("--components", "blocks.99.mlp"), ("--components", ","),
                          ("--objective", "forgetify"), ("--mode", "sideways"), ("--mode", "category"),
                          ("--data", str(ws / "same.csv")), ("--out", str(ws / "user_folder")),
                          ("--out", "/proc/x"), ("--out", str(ws / "notes.txt")), ("--model", ""),
                          ("--model", str(ws / "mamba")), ("--general-text", str(ws / "nope.txt")),
                          ("--forget-over", "everything"), ("--device-map", "sideways")):
        argv = [*edit, option, value]
        if option == "--localization":
            argv = [a for a in argv if a not in ("--components", "blocks.1.mlp")] + ["--budget", "8192"]
        out.append((f"edit {option} {value!r}", argv))
    out.append(("edit --target-band with --target 0", [*edit, "--target-band", "0.05"]))
    for value in ("3e-4,abc", "0,1e-3", "nan", "", "1e-3"):  # the last: a ladder with --target 0
        out.append((f"edit --lr-ladder {value!r}", [*edit, "--lr-ladder", value]))
    out.append(("edit every loss weight 0", [*edit, "--c-forget", "0", "--c-maintain", "0", "--c-general", "0"]))
    for option, value in (("--mmlu-limit", "-1"), ("--mmlu-shots", "-2"), ("--formats", ","),
                          ("--formats", "haiku"), ("--attacks", "jailbreak"), ("--forget-from", str(ws / "list.json")),
                          ("--forget-from", str(ws / "nope.json")), ("--config", str(ws / "bad.yaml")),
                          ("--seed", str(2**64)), ("--seed", "-1"), ("--out", str(ws / "user_folder")),
                          ("--base", str(ws / "nope")), ("--forget", "0"), ("--threshold", "1.5"),
                          ("--relearn-method", "magic")):
        out.append((f"evaluate {option} {value!r}", [*ev, option, value]))
    for name in ("empty", "dup", "param", "thr", "limit", "forget", "category", "unknown_key", "bad", "list",
                 "methods_empty", "objective", "lr_text", "nope"):
        out.append((f"run {name}.yaml", ["run", str(ws / f"{name}.yaml"), "--out", str(ws / "out_run"),
                                         "--set", f"model={ws / 'model'}", "--set", "device=cpu"]))
    out += [("run --set without =", ["run", "quick", "--set", "seeds", "--out", str(ws / "out_run")]),
            ("run --settings unknown", ["run", "quick", "--settings", "nope", "--out", str(ws / "out_run")]),
            ("run --out user folder", ["run", "quick", "--set", f"model={ws / 'model'}", "--out",
                                       str(ws / "user_folder")]),
            ("demo --out user folder", ["demo", "--quick", "--out", str(ws / "user_folder")]),
            ("demo --out a file", ["demo", "--out", str(ws / "notes.txt")]),
            ("apply-diff missing", ["apply-diff", str(ws / "nope.safetensors"), "--out", str(ws / "out_rebuilt")]),
            ("apply-diff not a diff", ["apply-diff", str(ws / "model" / "model.safetensors"), "--out",
                                       str(ws / "out_rebuilt")]),
            ("report not a run", ["report", str(ws / "user_folder")]),
            ("unknown command", ["frobnicate"]),
            ("edit no --out", ["edit", *m])]
    return out


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


def probe(ws: Path, name: str, argv: list[str], timeout: float) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "mechunlearn", *argv], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=ws)
    except subprocess.TimeoutExpired:
        return {"name": name, "outcome": "timeout", "seconds": timeout}
    text = done.stdout + done.stderr
    lines = [line for line in text.splitlines() if line.strip() and "%|" not in line]
    if "Traceback" in text:
        outcome = "traceback"
    elif done.returncode == 0:
        outcome = "accepted"
    elif done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        outcome = "refused"
    else:
        outcome = "other"
    return {"name": name, "outcome": outcome, "status": done.returncode, "seconds": time.perf_counter() - start,
            "last": lines[-1][:300] if lines else ""}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--only", default="")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mechunlearn-probe-") as folder:
        ws = Path(folder)
        workspace(ws)
        todo = [(n, a) for n, a in cases(ws) if args.only in n]
        before = snapshot(ws)

        def one(case):  # outputs named out_* are expected only from an accepted run: removed after
            result = probe(ws, *case, args.timeout)
            after = snapshot(ws)
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            result["wrote"] = changed[:5]
            print(f"{result['outcome']:9} {'WROTE ' if changed else ''}{result['name']}: {result.get('last', '')}",
                  flush=True)
            return result

        results = []  # one at a time: each is checked for what it wrote
        for case in todo:
            results.append(one(case))
            for p in ws.glob("out_*"):
                subprocess.run(["rm", "-rf", str(p)], check=False)
    counts = Counter(r["outcome"] for r in results)
    wrote = sum(1 for r in results if r["wrote"] and r["outcome"] != "accepted")
    print(f"\n{len(results)} bad inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f"; wrote files without succeeding: {wrote}")
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "wrote_without_success": wrote, "results": results},
                                        indent=1))


if __name__ == "__main__":
    main()
