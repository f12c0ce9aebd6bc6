"""Tests for the Inductor scopes (src/torchkiln/inductor_cache/scopes.py) and for the rule that they are the only
place, with compiler.py and compat/, that touches torch internals.

The scopes are checked on torch's real config objects in this process; that a restored bundle then loads without
compiling, in a fresh process, is tests/kernel_bundle/test_record.py.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

import pytest
from torch._functorch import config as functorch_config
from torch._inductor import config as inductor_config

from torchkiln import inductor_cache, kernels

SRC = Path(inductor_cache.__file__).resolve().parents[1]


def _allowed() -> tuple[str, ...]:
    """The tool's own allow-list (tools/check_forbidden_imports.py TORCH_PRIVATE_ALLOWED), relative to
    src/torchkiln: one list, which this test checks with its own AST walk (it also sees ``torch._x`` attributes)."""
    script = SRC.parents[1] / "tools" / "check_forbidden_imports.py"
    spec = importlib.util.spec_from_file_location("check_forbidden_imports", script)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tuple(path.removeprefix("src/torchkiln/") for path in tool.TORCH_PRIVATE_ALLOWED)


def _private_torch_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("torch._")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("torch._"):
                found.append(node.module)
            elif node.module == "torch":
                found += [f"torch.{a.name}" for a in node.names if a.name.startswith("_")]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "torch"
            and node.attr.startswith("_")
            and not node.attr.startswith("__")  # torch.__version__, torch.__file__ are public
        ):
            found.append(f"torch.{node.attr}")
    return found


def test_only_the_scope_owners_touch_torch_internals() -> None:
    offenders = {}
    allowed = _allowed()
    assert "compiler.py" in allowed and "inductor_cache/" in allowed
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(allowed):
            continue
        uses = _private_torch_uses(ast.parse(path.read_text(), filename=rel))
        if uses:
            offenders[rel] = sorted(set(uses))
    assert offenders == {}


def test_the_check_sees_every_form() -> None:
    code = "import torch._dynamo\nfrom torch._inductor import config\nfrom torch import _C\nx = torch._dynamo.x\n"
    assert _private_torch_uses(ast.parse(code)) == ["torch._dynamo", "torch._inductor", "torch._C", "torch._dynamo"]
    assert _private_torch_uses(ast.parse("import torch\ntorch.__version__, torch.nn.Module")) == []


@pytest.fixture
def threads_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)


def test_loading_pins_the_settings_and_loads_kernels_in_process(threads_not_set: None) -> None:
    before = (inductor_config.cpp_cache_precompile_headers, inductor_config.compile_threads)
    with inductor_cache.loading():
        assert inductor_config.cpp_cache_precompile_headers is False
        assert inductor_config.compile_threads == 1
    assert (inductor_config.cpp_cache_precompile_headers, inductor_config.compile_threads) == before


def test_loading_applies_a_restored_bundles_settings(threads_not_set: None) -> None:
    restored = kernels.RestoreReport(
        written=0,
        present=0,
        bytes_written=0,
        seconds=0.0,
        settings={"cpp_cache_precompile_headers": True},
        isa=None,
        cpu_matches=True,
        torch_version="t",
        roots=(),
    )
    with inductor_cache.loading(restored):
        assert inductor_config.cpp_cache_precompile_headers is True


def test_compiler_load_leaves_the_settings_to_its_caller(threads_not_set: None) -> None:
    before = inductor_config.cpp_cache_precompile_headers
    with inductor_cache.loading(bundle_settings=False):
        assert inductor_config.cpp_cache_precompile_headers is before
        assert inductor_config.compile_threads == 1


def test_an_explicit_compile_threads_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "2")
    before = inductor_config.compile_threads
    with inductor_cache.loading():
        assert inductor_config.compile_threads == before


def test_recording_redirects_the_caches_and_restores_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "user"))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    with inductor_cache.recording(tmp_path / "private") as recorded:
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "private" / "inductor")
        assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "private" / "triton")
        assert inductor_config.cpp_cache_precompile_headers is False
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "user")
    assert "TRITON_CACHE_DIR" not in os.environ
    assert recorded.torch_version
    assert recorded.isa is None or isinstance(recorded.isa, str)


def test_first_call_scope_skips_the_aliasing_check() -> None:
    if not hasattr(functorch_config, "check_custom_op_aliasing"):
        pytest.skip("torch 2.10 has no custom-op aliasing check")
    before = functorch_config.check_custom_op_aliasing
    with inductor_cache.without_custom_op_aliasing_check():
        assert functorch_config.check_custom_op_aliasing is False
    assert functorch_config.check_custom_op_aliasing == before
