"""The specialize_float retry of aot_compile (src/torchkiln/compat/float_specialization.py) and CompileError reasons.

``probe()`` shows the bug for real (a plain aot_compile of a tiny sdpa function with ``dynamic=True`` raises
``TensorifyScalarRestartAnalysis``); where it does, the same function compiles through ``compiler.compile_target``
with the retry recorded. The end-to-end test compiles a tiny Llama with ``dynamic=True`` in one process and loads
it in a fresh one, where a second sequence length is served by the same artifact and matches eager.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from helpers.procs import run_child
from torchkiln import compiler
from torchkiln.compat import float_specialization
from torchkiln.compat.versions import in_range

pytestmark = pytest.mark.compat

#: float32: Inductor fuses and reorders reductions, eager does not; logits of a random tiny model are O(1).
ATOL = 1e-4


def sdpa_with_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    out: torch.Tensor = torch.nn.functional.scaled_dot_product_attention(x, x, x, scale=scale)
    return out


@pytest.fixture(scope="module")
def bug_present() -> bool:
    return float_specialization.probe()


def test_exception_reason_is_never_empty() -> None:
    from torch._dynamo.exc import TensorifyScalarRestartAnalysis

    assert compiler.exception_reason(TensorifyScalarRestartAnalysis()) == "TensorifyScalarRestartAnalysis"
    assert compiler.exception_reason(RuntimeError("\n  \n  first line \nsecond")) == "RuntimeError: first line"
    assert compiler.exception_reason(ValueError("")) == "ValueError"


def test_retry_scope_only_for_the_restart() -> None:
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.exc import TensorifyScalarRestartAnalysis

    assert float_specialization.retry_scope(ValueError("something else")) is None
    scope = float_specialization.retry_scope(TensorifyScalarRestartAnalysis())
    if not in_range(float_specialization.AFFECTED):
        assert scope is None
        return
    assert scope is not None
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = TensorifyScalarRestartAnalysis()
    assert float_specialization.retry_scope(wrapped) is not None  # found through the cause chain
    before = dynamo_config.specialize_float
    with scope:
        assert dynamo_config.specialize_float is True
    assert dynamo_config.specialize_float == before
    with dynamo_config.patch(specialize_float=True):  # the user's own setting: nothing to retry with
        assert float_specialization.retry_scope(TensorifyScalarRestartAnalysis()) is None


def test_compile_target_retries_where_the_probe_shows_the_bug(bug_present: bool) -> None:
    from torch._dynamo.symbolic_convert import TensorifyState

    before = set(TensorifyState.force_specializations)  # the probe left it as it was
    x = torch.randn(1, 2, 4, 8)
    result = compiler.compile_target(
        sdpa_with_scale, (x, 0.5), {}, is_module=False, dynamic=True, backend="inductor", options=None
    )
    assert result.retried == (float_specialization.NAME if bug_present else None)
    # the failed first attempt's float name does not stay behind to specialize later compiles of this process
    assert TensorifyState.force_specializations == before
    assert result.payload is not None
    assert torch.allclose(result.function(x, 0.5), sdpa_with_scale(x, 0.5), atol=1e-6)


def test_dynamic_llama_compiles_hits_and_serves_another_length(tmp_path: Path, bug_present: bool) -> None:
    pytest.importorskip("transformers")
    config: dict[str, Any] = {
        "target": "helpers.hf_models:make_llama",
        "inputs": "helpers.hf_models:llama_inputs",
        "cache": str(tmp_path / "cache"),
        "dynamic": True,
        "calls": [{"seq": 11}],
    }
    log = {"TORCHKILN_LOG": "info"}
    built = run_child(config, tmp_path / "build", extra_env=log, timeout=1800)
    loaded = run_child(config, tmp_path / "load", extra_env=log, timeout=1800)
    build, load = built["compiles"][0], loaded["compiles"][0]
    assert build["error"] is None, build["error"]["message"]
    assert build["hit"] is False and build["warnings"] == []
    assert build["max_diff"] <= ATOL
    # The retry happened exactly where the probe shows the bug, and said so.
    assert ("retrying with specialize_float=True" in built["stderr"]) == bug_present
    assert load["error"] is None, load["error"]["message"]
    assert load["hit"] is True and load["warnings"] == []
    assert load["timings"]["compile"] == 0.0
    assert load["key"] == build["key"] and load["max_diff"] <= ATOL
    (other,) = load["calls"]  # sequence length 11: the artifact built for 16 serves it
    assert other["error"] is None, other["error"]["message"]
    assert other["warnings"] == [] and other["max_diff"] <= ATOL
    assert other["shape"][1] == 11
    assert other["specializations"] == [build["key"]]
