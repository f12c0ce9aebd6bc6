"""Real transformers models through ``torchkiln.compile``: compile and save in one process, load in a fresh one.

Tiny configs with seeded random weights (tests/helpers/hf_models.py, no downloads): a Llama-style causal LM (its
forward goes through ``@can_return_tuple``), GPT-2, a ViT classifier and a Llava vision-language model. One
process compiles all four into a temporary cache, a second one with empty Inductor/Triton caches loads all four;
both compare with eager in their own process. The settings each model needs are in docs/MODELS.md. These run in
both lanes (torch 2.13 default, the 2.11 compat lane): ``make test-compat`` selects ``slow``.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import torch
from packaging.version import Version

from helpers.procs import run_child

pytest.importorskip("transformers", reason="transformers is in the dev extra")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.models,
    pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU backend needs g++"),
]

#: Where a model cannot compile fullgraph on an older torch: (model, first good torch, the error torch raises).
#: Llava's image-token mask (``inputs_embeds[special_image_mask]``) has a data-dependent size; torch 2.11's Dynamo
#: loses that unbacked symbol (``PendingUnbackedSymbolNotFound``), torch 2.13 traces it. See docs/MODELS.md.
KNOWN_TORCH_LIMITS = {"llava": (Version("2.13.0.dev0"), "PendingUnbackedSymbolNotFound")}

#: float32: Inductor fuses and reorders reductions, eager does not; logits of a random tiny model are O(1).
ATOL = 1e-4

MODELS: dict[str, dict[str, Any]] = {
    "llama": {"target": "helpers.hf_models:make_llama", "inputs": "helpers.hf_models:llama_inputs"},
    "gpt2": {"target": "helpers.hf_models:make_gpt2", "inputs": "helpers.hf_models:gpt2_inputs"},
    "vit": {"target": "helpers.hf_models:make_vit", "inputs": "helpers.hf_models:vit_inputs"},
    "llava": {"target": "helpers.hf_models:make_llava", "inputs": "helpers.hf_models:llava_inputs"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict[str, Any]]]:
    work = tmp_path_factory.mktemp("models")
    config = {"cache": str(work / "cache"), "compiles": list(MODELS.values())}
    built = run_child(config, work / "build", timeout=1800)
    loaded = run_child(config, work / "load", timeout=1800)
    return {
        name: {"built": b, "loaded": lo}
        for name, b, lo in zip(MODELS, built["compiles"], loaded["compiles"], strict=True)
    }


@pytest.mark.parametrize("name", list(MODELS))
def test_model_round_trip_matches_eager(runs: dict[str, dict[str, dict[str, Any]]], name: str) -> None:
    built, loaded = runs[name]["built"], runs[name]["loaded"]
    limit = KNOWN_TORCH_LIMITS.get(name)
    if limit and Version(torch.__version__) < limit[0] and built["error"] and limit[1] in built["error"]["message"]:
        pytest.xfail(f"{name} needs torch >= {limit[0].base_version}: {built['error']['message'][:300]}")
    assert built["error"] is None, built["error"]["message"]
    assert built["hit"] is False
    assert built["warnings"] == []
    assert built["max_diff"] <= ATOL
    assert loaded["error"] is None, loaded["error"]["message"]
    assert loaded["warnings"] == []
    assert loaded["hit"] is True, "a fresh process must load the artifact, not compile"
    assert loaded["key"] == built["key"]
    assert loaded["timings"]["compile"] == 0.0
    assert loaded["max_diff"] <= ATOL
    assert loaded["checksum"] == built["checksum"]
