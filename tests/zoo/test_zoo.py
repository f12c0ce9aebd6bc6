"""The model zoo: every family in tests/helpers/zoo.py compiled in one process, hit in a fresh one, vs eager.

One child process compiles every selected case into a temporary cache (one torch + transformers import for all of
them: 2 cores), a second child with empty Inductor/Triton caches loads them; both compare with eager in their own
process. Each decoder LM runs twice: static shapes, and ``dynamic=True`` called again at two other batch sizes and
sequence lengths, which the one artifact must serve (no new specialization, no compile in the loading process).

Which cases run where (docs/RELIABILITY.md, docs/MODELS.md): the ``CI`` subset is marked ``models`` only and runs
in ``make test-slow`` (torch 2.13) and ``make test-compat`` (torch 2.11); every other case also carries the ``zoo``
marker, which the CI lanes deselect, and runs in ``make test-zoo`` / ``make test-zoo-compat``. Only the selected
cases are compiled (``-k qwen2`` compiles one family).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from packaging.specifiers import SpecifierSet

from helpers.procs import run_child
from helpers.zoo import FAMILIES

pytest.importorskip("transformers", reason="transformers is in the dev extra")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.models,
    pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU backend needs g++"),
]

#: The subset the CI lanes run: a dynamic-shape decoder LM (the serving case), an encoder with an attention mask
#: and an audio encoder, chosen for coverage per second of compile on 2 cores.
CI = frozenset({("qwen2", "dynamic"), ("bert", "static"), ("whisper_encoder", "static")})

#: float32: Inductor fuses and reorders reductions, eager does not; outputs of a random tiny model are O(1).
ATOL = 1e-4

#: Where a case cannot compile fullgraph on some torch: (family, mode) -> (torch versions, the error torch raises,
#: why). Each is an upstream limitation (plain ``torch.compile(fullgraph=True)`` fails the same way: docs/MODELS.md).
KNOWN_LIMITS: dict[tuple[str, str], tuple[SpecifierSet, str, str]] = {
    # torch.split(..., cu_seqlens.diff().tolist()) in the vision attention (and, for 2.5, the window index built
    # from grid_thw values): sizes that depend on tensor data. The *_lm families are the recipe that serves them.
    # inputs_embeds[special_image_mask]: torch 2.11's Dynamo loses the unbacked size (2.13 traces it)
    ("llava", "static"): (
        SpecifierSet("<2.13.dev0"),
        "PendingUnbackedSymbolNotFound",
        "the image-token mask has a data-dependent size",
    ),
    ("paligemma", "static"): (
        SpecifierSet("<2.13.dev0"),
        "PendingUnbackedSymbolNotFound",
        "the image-token mask has a data-dependent size",
    ),
    ("qwen2_vl", "static"): (
        SpecifierSet(">=2.10.dev0"),
        "GuardOnDataDependentSymNode",
        "the vision tower splits attention by data-dependent lengths",
    ),
    ("qwen2_5_vl", "static"): (
        SpecifierSet(">=2.10.dev0"),
        "GuardOnDataDependentSymNode",
        "the vision tower's window index depends on grid_thw values",
    ),
}

#: The sizes the dynamic artifact is called at after the example's (batch 2, sequence 16). Not 1: Dynamo specializes
#: sizes 0 and 1, so a batch of one is its own key (cache_key.EXCLUDED) and its own compile.
DYNAMIC_CALLS = ({"batch": 3, "seq": 24}, {"batch": 4, "seq": 9})


def _cases() -> list[Any]:
    cases = []
    for name, family in FAMILIES.items():
        for mode in ("static", "dynamic") if family.decoder else ("static",):
            marks = [] if (name, mode) in CI else [pytest.mark.zoo]
            cases.append(pytest.param(name, mode, id=f"{name}-{mode}", marks=marks))
    return cases


def _compile_config(name: str, mode: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "target": "helpers.zoo:build",
        "target_kwargs": {"family": name},
        "inputs": "helpers.zoo:inputs",
        "inputs_kwargs": {"family": name},
        "name": f"zoo-{name}-{mode}",
    }
    if mode == "dynamic":
        config["dynamic"] = True
        config["calls"] = [{"family": name, **sizes} for sizes in DYNAMIC_CALLS]
    return config


def _selected(session: pytest.Session) -> list[tuple[str, str]]:
    here = Path(__file__).resolve()
    picked = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and Path(str(item.path)).resolve() == here:
            picked.append((callspec.params["name"], callspec.params["mode"]))
    return picked


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    """Compile every selected case in one process, then load the ones that compiled in a fresh one."""
    work = tmp_path_factory.mktemp("zoo")
    cases = _selected(request.session)
    configs = [_compile_config(*case) for case in cases]
    start = time.perf_counter()
    built = run_child({"cache": str(work / "cache"), "compiles": configs}, work / "build", timeout=3600)
    build_s = time.perf_counter() - start
    good = [i for i, b in enumerate(built["compiles"]) if b["error"] is None]
    loaded: dict[int, Any] = {}
    load_s = 0.0
    if good:
        # Every case again, the ones that did not compile too (they fail in seconds): transformers records each
        # model class a process instantiates in a global registry (output_capturing._CAN_RECORD_REGISTRY, a dict
        # subclass) whose keys Dynamo guards in order, so a loading process must have built the same classes in
        # the same order as the compiling one, or it misses (docs/MODELS.md, "Process history").
        start = time.perf_counter()
        result = run_child({"cache": str(work / "cache"), "compiles": configs}, work / "load", timeout=1800)
        load_s = time.perf_counter() - start
        loaded = {i: result["compiles"][i] for i in good}
    out = {case: {"built": built["compiles"][i], "loaded": loaded.get(i)} for i, case in enumerate(cases)}
    report = os.environ.get("ZOO_REPORT")  # a JSON file for docs/MODELS.md's table and the lane timings
    if report:
        rows = [{"family": n, "mode": m, **r} for (n, m), r in out.items()]
        summary = {"torch": built["torch"], "build_s": build_s, "load_s": load_s, "cases": rows}
        Path(report).write_text(json.dumps(summary, indent=1))
    return out


def _known_limit(name: str, mode: str, error: dict[str, Any] | None) -> str | None:
    limit = KNOWN_LIMITS.get((name, mode))
    if limit is None or error is None:
        return None
    versions, text, why = limit
    if torch.__version__.split("+")[0] in versions and text in error["message"]:
        return f"{name} ({mode}) on torch {torch.__version__}: {why}: {error['message'][:300]}"
    return None


@pytest.mark.parametrize(("name", "mode"), _cases())
def test_family_round_trip_matches_eager(runs: dict[tuple[str, str], Any], name: str, mode: str) -> None:
    built, loaded = runs[name, mode]["built"], runs[name, mode]["loaded"]
    reason = _known_limit(name, mode, built["error"])
    if reason:
        pytest.xfail(reason)
    assert built["error"] is None, built["error"]["message"]
    assert built["hit"] is False
    assert built["warnings"] == []
    assert built["max_diff"] <= ATOL
    assert loaded is not None
    assert loaded["error"] is None, loaded["error"]["message"]
    assert loaded["warnings"] == []
    assert loaded["hit"] is True, "a fresh process must load the artifact, not compile"
    assert loaded["key"] == built["key"]
    assert loaded["timings"]["compile"] == 0.0
    assert loaded["max_diff"] <= ATOL
    assert loaded["checksum"] == built["checksum"]
    for record in (built, loaded):
        for call in record["calls"]:  # dynamic: other sizes are served by the same artifact
            assert call["error"] is None, call["error"]["message"]
            assert call["warnings"] == []
            assert call["max_diff"] <= ATOL, call
            assert call["specializations"] == [built["key"]], "another size must not need another compile"
    if mode == "dynamic":
        assert [c["shape"][:2] for c in loaded["calls"]] == [[c["batch"], c["seq"]] for c in DYNAMIC_CALLS]
