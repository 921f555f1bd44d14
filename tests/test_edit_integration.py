"""The issue's targets on the embedded Gemma 3 270M, with the default EditConfig at a fixed 10 steps
(the default cap is 30, for training to a target; these tests train a fixed number): 16 known
built-in athletes (random split, seed 0), early/middle MLP layers 2-7 (6 x 3.9 M parameters).

* edit: P(edit target) >= 0.9 in the training format, maintain-test P(true) drops <= 0.05;
* unlearn (log1m): P(true) < 0.1 with the same maintain bound;
* the diff is a small fraction of the model and rebuilds the edit exactly from the base.

The session's ``gemma`` model is edited in place and restored bitwise after each test.
"""

from contextlib import contextmanager

import pytest
import torch

from mechunlearn.edit import EditConfig, apply_diff, expand_components, read_diff, save_edit, train
from mechunlearn.facts import answer_probs, split_facts

pytestmark = pytest.mark.integration  # the embedded model: every core helps (no one_thread)

COMPONENTS = "blocks.2..7.mlp"
MAINTAIN_DROP = 0.05
STEPS = 10  # what these targets were set at (EditConfig's default before the shared cap of 30)


@pytest.fixture(scope="module")
def split(gemma_known_athletes):
    return split_facts(gemma_known_athletes, forget=16, mode="random", seed=0)


@contextmanager
def restored(lm, components: str):
    params = {s.param for c in expand_components(lm.arch, components) for s in lm.arch.component(c).slices}
    originals = {n: p.detach().clone() for n, p in lm.model.named_parameters() if n in params}
    try:
        yield originals
    finally:
        with torch.no_grad():
            for n, p in lm.model.named_parameters():
                if n in originals:
                    p.copy_(originals[n])


def _probs(lm, split):
    p_true, p_new = answer_probs(lm.model, lm.tokenizer, split.forget)
    keep, _ = answer_probs(lm.model, lm.tokenizer, split.maintain_test)
    return p_true, p_new, keep


def test_edit_reaches_the_target_and_saves_a_small_exact_diff(gemma, split, tmp_path):
    with restored(gemma, COMPONENTS) as originals:
        p0_true, p0_new, keep0 = _probs(gemma, split)
        result = train(gemma, COMPONENTS, split, EditConfig(objective="edit", steps=STEPS), progress=False)
        p_true, p_new, keep = _probs(gemma, split)
        print(f"\nedit: P(new) {p0_new.mean():.3f} -> {p_new.mean():.3f} (min {p_new.min():.3f}), P(true) "
              f"{p0_true.mean():.3f} -> {p_true.mean():.3f}, maintain {keep0.mean():.3f} -> {keep.mean():.3f}, "
              f"{result.n_trained_params} params, {result.seconds:.0f} s")
        assert p0_new.mean() < 0.2
        assert p_new.mean() >= 0.9
        assert keep0.mean() - keep.mean() <= MAINTAIN_DROP
        assert result.n_trained_params == 6 * 3 * gemma.arch.d_model * gemma.arch.d_mlp

        out = save_edit(gemma, result, tmp_path / "edit", base_spec="default")
        model_bytes = sum(f.stat().st_size for f in (out / "model").glob("*.safetensors"))
        diff_bytes = (out / "diff.safetensors").stat().st_size
        print(f"diff {diff_bytes / 2**20:.0f} MiB vs model {model_bytes / 2**20:.0f} MiB")
        assert diff_bytes < 0.15 * model_bytes
        edited = {n: p.detach().clone() for n, p in gemma.model.named_parameters() if n in originals}
        with torch.no_grad():
            for n, p in gemma.model.named_parameters():
                if n in originals:
                    p.copy_(originals[n])
        assert read_diff(out).base_hash == result.base_hash
        apply_diff(gemma, out / "diff.safetensors")
        for n, p in gemma.model.named_parameters():
            if n in edited:
                assert torch.equal(p.detach(), edited[n]), n


def test_log1m_unlearns_16_athletes(gemma, split):
    with restored(gemma, COMPONENTS):
        p0_true, _, keep0 = _probs(gemma, split)
        result = train(gemma, COMPONENTS, split, EditConfig(objective="log1m", steps=STEPS), progress=False)
        p_true, _, keep = _probs(gemma, split)
        print(f"\nlog1m: P(true) {p0_true.mean():.3f} -> {p_true.mean():.3f} (max {p_true.max():.3f}), "
              f"maintain {keep0.mean():.3f} -> {keep.mean():.3f}, {result.seconds:.0f} s")
        assert p0_true.mean() > 0.7
        assert p_true.mean() < 0.1
        assert keep0.mean() - keep.mean() <= MAINTAIN_DROP
