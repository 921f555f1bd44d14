"""Every localization method on the embedded Gemma 3 270M, on the same 32 known athletes.
Run with ``-s`` to see what each method finds (nothing here hard-codes layers)."""

import time

import pytest
import torch

from mechunlearn.localize import METHODS, localize, select
from mechunlearn.localize.plots import plot_heatmap, plot_probe_curves
from mechunlearn.localize.scores import candidates

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def athletes32(gemma_known_athletes):
    """32 known athletes taken in turn from each sport (the built-in list is sorted by sport, so
    its first 32 would all play football and the probes would have a single class)."""
    by_sport: dict[str, list] = {}
    for f in gemma_known_athletes:
        by_sport.setdefault(f.target_true, []).append(f)
    chosen, i = [], 0
    while len(chosen) < 32:
        for sport in sorted(by_sport):
            if i < len(by_sport[sport]) and len(chosen) < 32:
                chosen.append(by_sport[sport][i])
        i += 1
    return gemma_known_athletes.subset(chosen, "32 known athletes")


def _top_layers(loc, arch, n=6):
    ranked = sorted(candidates(loc.scores, arch, "layer"), key=lambda c: (-c.score, c.order))
    return [f"{c.label.removeprefix('blocks.')}={c.score:.3f}" for c in ranked[:n]]


def test_every_method_on_32_known_athletes(gemma, gemma_known_athletes, athletes32, tmp_path):
    torch.set_num_threads(2)
    arch = gemma.arch
    locs, seconds = {}, {}
    for method in METHODS:
        start = time.perf_counter()
        # FLU's probes read every known athlete (probes are noisy on 32); its patching uses the 32
        extra = {"probe_facts": gemma_known_athletes} if method == "fact_lookup" else {}
        locs[method] = localize(gemma, athletes32, method, seed=0, **extra)
        seconds[method] = time.perf_counter() - start
        assert locs[method].fact_ids == [f.id for f in athletes32]

    flu = locs["fact_lookup"]
    ev = flu.evidence
    probes = ev["probes"]
    print(f"\nFLU ({seconds['fact_lookup']:.0f} s): layers {ev['flu_layers']}, receiver layer {ev['receiver_layer']}")
    print("  rule:", ev["rule"])
    print("  probe subject alone:", [round(a, 2) for a in probes["subject"]], "chance", round(probes["chance"], 2))
    print("  probe in prompt:    ", [round(a, 2) for a in probes["prompt"]])
    print("  top extraction heads:", [(k, round(v, 3)) for k, v in list(ev["extraction_heads"].items())[:6]])
    print("  MLP path patching:", {k: round(v, 3) for k, v in ev["mlp_path_patching"].items()})
    assert ev["flu_layers"] and flu.chosen and all(".mlp." in c for c in flu.chosen)
    assert all(layer < ev["receiver_layer"] for layer in ev["flu_layers"])
    assert probes["classes"] == ["football", "baseball", "basketball"] and len(probes["subject"]) == arch.n_layers + 1
    assert probes["n_facts"] == len(gemma_known_athletes)
    # the model knows these facts: the attribute is linearly decodable somewhere in the prompt
    assert max(probes["prompt"]) > probes["chance"] + 0.2

    ct = locs["causal_tracing"].evidence
    assert ct["p_clean"] > ct["p_noised"]
    assert locs["attribution_patching"].evidence["logit_diff"]["clean"] > \
        locs["attribution_patching"].evidence["logit_diff"]["corrupt"]

    target = select(flu, arch)
    print(f"FLU budget: {target.n_params:,} parameters ({len(target.components)} matrices)")
    for method, loc in locs.items():
        if method == "fact_lookup":
            continue
        sel = select(loc, arch, match=target, rule="under")
        assert 0 < sel.n_params <= target.n_params
        layers = sorted({".".join(c.split(".")[1:3]) for c in sel.components}, key=lambda s: (int(s.split(".")[0]), s))
        print(f"{method} ({seconds[method]:.0f} s): top {_top_layers(loc, arch)}; at FLU's budget "
              f"{sel.n_params:,}: {layers}")
    plot_heatmap(flu, tmp_path / "flu.png")
    plot_probe_curves(flu, tmp_path / "probes.png")
    plot_heatmap(locs["causal_tracing"], tmp_path / "ct.png")
