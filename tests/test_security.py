"""Security defaults and integrity: nothing is pickled or unpickled, remote code runs only when
asked for, local weights are safetensors only, temporary files are private, and the source
model's files are byte-identical after edit, evaluate and apply-diff."""

import ast
import hashlib
import pickle
import sys
import types
from pathlib import Path

import pytest

from mechunlearn.cli.app import invoke
from mechunlearn.errors import ModelLoadError
from mechunlearn.models.loading import load_model
from mechunlearn.models.tiny import tiny_model

SRC = Path(__file__).resolve().parents[1] / "src" / "mechunlearn"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "not a constant"
    return None


def _safe_loader(node: ast.Call) -> bool:
    """yaml.load(..., Loader=X) where X is named a SafeLoader (the project's own loaders subclass
    yaml.SafeLoader, which test_the_config_loader_is_a_safe_loader checks)."""
    loader = next((kw.value for kw in node.keywords if kw.arg == "Loader"), None)
    name = loader.attr if isinstance(loader, ast.Attribute) else loader.id if isinstance(loader, ast.Name) else ""
    return name.endswith("SafeLoader")


def unsafe_calls(source: str) -> list[str]:
    """What in ``source`` pickles, unpickles, runs remote code or loads YAML unsafely."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"line {node.lineno}: imports {n}" for n in names if n and n.split(".")[0] in PICKLE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        where = f"line {node.lineno}: {owner + '.' if owner else ''}{name}"
        if name == "load" and owner == "torch" and _keyword(node, "weights_only") is not True:
            found.append(f"{where} without weights_only=True")
        if name == "save" and owner == "torch":
            found.append(f"{where} (pickles)")
        if name in ("read_pickle", "to_pickle"):
            found.append(where)
        if owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load", "full_load_all") \
                and not _safe_loader(node):
            found.append(f"{where} (use yaml.safe_load)")
        if _keyword(node, "allow_pickle") not in (None, False):
            found.append(f"{where} with allow_pickle")
        if _keyword(node, "trust_remote_code") is True:
            found.append(f"{where} with trust_remote_code=True")
        if _keyword(node, "safe_serialization") is False or _keyword(node, "use_safetensors") is False:
            found.append(f"{where} writes or reads pickled weights")
    return found


def test_the_scanner_finds_planted_pickles():
    planted = """
import pickle
from joblib import dump
import torch, yaml
torch.load("w.pt")
torch.load("w.pt", weights_only=False)
torch.save(model, "w.pt")
df.to_pickle("x")
np.load("a.npy", allow_pickle=True)
yaml.load(text)
AutoModel.from_pretrained(path, trust_remote_code=True)
model.save_pretrained(path, safe_serialization=False)
"""
    found = unsafe_calls(planted)
    assert len(found) == 10, found
    assert unsafe_calls("torch.load('w.pt', weights_only=True)\nyaml.safe_load(t)\nload_model(s, trust_remote_code=f)") == []


def test_the_config_loader_is_a_safe_loader():
    import yaml

    from mechunlearn.experiment.config import StrictSafeLoader

    assert issubclass(StrictSafeLoader, yaml.SafeLoader)
    assert unsafe_calls("yaml.load(t, Loader=StrictSafeLoader)") == []
    assert len(unsafe_calls("yaml.load(t, Loader=yaml.Loader)")) == 1


def test_nothing_in_src_pickles_unpickles_or_trusts_remote_code():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    problems = {str(p.relative_to(SRC)): unsafe_calls(p.read_text()) for p in files}
    assert {k: v for k, v in problems.items() if v} == {}


def test_remote_code_is_off_unless_asked_and_local_weights_are_safetensors(tmp_path, monkeypatch):
    import transformers

    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    calls = []
    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, **kwargs):
            calls.append((klass.__name__, kwargs))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_model(str(tmp_path))
    assert {name for name, _ in calls} == {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"}
    assert all(kw.get("trust_remote_code", False) is False for _, kw in calls)
    assert [kw.get("use_safetensors") for name, kw in calls if name == "AutoModelForCausalLM"] == [True]
    calls.clear()
    load_model(str(tmp_path), trust_remote_code=True)  # the explicit flag is passed through
    assert [kw.get("trust_remote_code") for name, kw in calls if name != "AutoConfig"] == [True, True]


class _Payload:
    def __reduce__(self):
        return (exec, (f"open({str(MARKER)!r}, 'w').write('pwned')",))


MARKER = Path("/nonexistent")


def test_a_pickled_checkpoint_is_never_opened(tmp_path, monkeypatch):
    """A folder whose only weights are a .bin that runs code when unpickled is refused before
    anything reads it: the planted payload never runs."""
    global MARKER
    MARKER = tmp_path / "payload-ran"
    lm = tiny_model("llama")
    folder = tmp_path / "model"
    lm.model.config.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload()))
    pickle.loads((folder / "pytorch_model.bin").read_bytes())  # the payload works when unpickled ...
    assert MARKER.exists()
    MARKER.unlink()
    with pytest.raises(ModelLoadError, match="no .safetensors"):
        load_model(str(folder))
    assert not MARKER.exists()  # ... and load_model never unpickled it


def test_load_hub_writes_to_a_private_temporary_folder(tmp_path, monkeypatch):
    """The Hub rows go to a fresh ``tempfile`` folder (not a fixed /tmp name), removed afterwards."""
    from mechunlearn.facts.loaders import load_hub

    written = []

    class FakeDataset:
        def to_json(self, path):
            written.append(Path(path))
            Path(path).write_text('{"subject": "Ann Lee", "prompt": "Ann Lee plays", "target_true": "golf"}\n')

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: FakeDataset()))
    facts = load_hub("someone/athletes")
    facts_again = load_hub("someone/athletes")
    assert [f.subject for f in facts] == ["Ann Lee"] == [f.subject for f in facts_again]
    assert written[0].parent != written[1].parent  # a fresh folder each time: nothing predictable to pre-plant
    assert "someone" not in str(written[0]) and not written[0].parent.exists()


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_source_model_files_are_byte_identical_after_edit_evaluate_and_apply_diff(tmp_path, capsys):
    lm = tiny_model("llama")
    model = tmp_path / "model"
    lm.model.save_pretrained(model)
    lm.tokenizer.save_pretrained(model)
    data = tmp_path / "facts.csv"
    rows = [f"f{i},Person {i},Fact: Person {i} plays the sport of,{('football', 'baseball')[i % 2]},golf"
            for i in range(10)]
    data.write_text("id,subject,prompt,target_true,target_new\n" + "\n".join(rows) + "\n")
    before, data_before = _hashes(model), data.read_bytes()
    common = ["--device", "cpu"]
    assert invoke(["edit", "--model", str(model), "--components", "blocks.1.mlp,blocks.2.attn", "--dataset", "table",
                   "--data", str(data), "--threshold", "0", "--forget", "3", "--steps", "3", "--target", "0",
                   "--out", str(tmp_path / "edit"), *common]) == 0, capsys.readouterr()
    edited = _hashes(tmp_path / "edit" / "model")
    assert edited["model.safetensors"] != before["model.safetensors"]  # the edit did change weights (elsewhere)
    assert invoke(["evaluate", "--model", str(tmp_path / "edit"), "--formats", "train", "--out",
                   str(tmp_path / "eval.json"), *common]) == 0, capsys.readouterr()
    assert invoke(["apply-diff", str(tmp_path / "edit"), "--out", str(tmp_path / "rebuilt"), *common]) == 0
    assert _hashes(model) == before and data.read_bytes() == data_before
    assert _hashes(tmp_path / "edit" / "model") == edited  # evaluate reads the edit, never writes it
