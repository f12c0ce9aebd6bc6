"""The forward-fix registry, version checks and bad input (src/torchkiln/compat/registry.py, versions.py).

These run in-process on the running torch (the probes exercise it for real, about a second each, once per
process). A fix whose targets are missing is simulated with a Fix record added to the registry's table, never by
mocking torch. Every test leaves the real fixes reverted, so no patch leaks into the next test. The tests whose
outcome depends on the running torch carry the ``compat`` marker, so ``make test-compat`` runs them on 2.11 too.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import torchkiln
from torchkiln import compat
from torchkiln.compat import registry, runtime_env_patch
from torchkiln.compat.versions import MIN_TORCH, check_supported, in_range, torch_version
from torchkiln.errors import InvalidTargetError, TorchkilnError, UnknownFixError, UnsupportedTorchError

FIX_IDS = (
    "enable-aot-compile",
    "builtins-runtime-env",
    "module-globals",
    "guard-state-singletons",
    "self-pickling-local-modules",
    "import-source-reload",
    "wrapped-functions",
    "static-autotuner-paths",
    "coordesc-warm-cache",
    "isa-probe-without-import",
)


def _revert_all() -> None:
    for fix in compat.fixes():
        fix.revert()


@pytest.fixture(autouse=True)
def pristine() -> Iterator[None]:
    _revert_all()
    yield
    _revert_all()


# -- the table ---------------------------------------------------------------------------------------------------
def test_registered_fixes_and_their_records() -> None:
    assert tuple(fix.id for fix in compat.fixes()) == FIX_IDS
    for fix in compat.fixes():
        assert fix.title and fix.upstream and fix.touches
        assert isinstance(fix.affected, SpecifierSet)
        # .dev bounds, so nightlies of the bounding releases count (DESIGN §6)
        assert all(".dev" in spec.version for spec in fix.affected), fix.affected


def test_unknown_fix_id_names_the_known_ones() -> None:
    with pytest.raises(UnknownFixError) as info:
        torchkiln.apply_fixes(["no-such-fix"])
    error = info.value
    assert isinstance(error, KeyError) and isinstance(error, TorchkilnError)
    assert "no-such-fix" in error.what
    assert error.fix is not None and all(fix_id in error.fix for fix_id in FIX_IDS)
    assert "How to fix" in str(error) and "no-such-fix" in str(error)
    with pytest.raises(UnknownFixError):
        compat.status("no-such-fix")
    assert compat.applied_ids() == []  # the bad id was rejected before anything was applied


# -- states, apply, revert ---------------------------------------------------------------------------------------
def _original_get_runtime_env() -> Any:
    cls = runtime_env_patch.target_class()
    assert cls is not None, "every supported torch has GraphCaptureOutput.get_runtime_env"
    return cls.__dict__["get_runtime_env"]


@pytest.mark.compat
def test_states_before_and_after_apply() -> None:
    before = {status.id: status for status in torchkiln.fixes()}
    assert set(before) == set(FIX_IDS)
    for status in before.values():
        # not applicable only where the fix is Triton's and this torch has none (the CPU wheel)
        expected = (compat.FixState.NEEDED, compat.FixState.NOT_NEEDED)
        if compat.get_fix(status.id).needs_triton and importlib.util.find_spec("triton") is None:
            expected = (compat.FixState.NOT_APPLICABLE,)
        assert status.state in expected, status
        json.dumps(status.to_dict())  # doctor --json prints these
    after = {status.id: status for status in torchkiln.apply_fixes()}
    for fix_id, status in before.items():
        expected = compat.FixState.APPLIED if status.state is compat.FixState.NEEDED else status.state
        assert after[fix_id].state is expected, (fix_id, status, after[fix_id])
    assert sorted(compat.applied_ids()) == sorted(i for i, s in after.items() if s.state is compat.FixState.APPLIED)


@pytest.mark.compat
def test_state_agrees_with_the_documented_range() -> None:
    # The probes run torch for real; on every torch of the matrix they must agree with the upstream history:
    # builtins-runtime-env and enable-aot-compile are needed exactly on 2.10 and 2.11.
    for fix_id in ("builtins-runtime-env", "enable-aot-compile"):
        needed = compat.status(fix_id).state is compat.FixState.NEEDED
        assert needed == (Version("2.10.dev0") <= torch_version() < Version("2.12.dev0")), fix_id


@pytest.mark.compat
def test_apply_is_idempotent_and_revert_restores_the_original_method() -> None:
    original = _original_get_runtime_env()
    first = torchkiln.apply_fixes()
    patched = _original_get_runtime_env()
    second = torchkiln.apply_fixes()
    assert [s.to_dict() for s in second] == [s.to_dict() for s in first]
    assert _original_get_runtime_env() is patched  # not wrapped twice
    needs_patch = {s.id for s in first if s.state is compat.FixState.APPLIED} & {
        "builtins-runtime-env",
        "module-globals",
    }
    assert (patched is not original) == bool(needs_patch)
    # Reverting in either order restores the very same function object torch defined.
    for fix in reversed(compat.fixes()):
        fix.revert()
    assert _original_get_runtime_env() is original
    torchkiln.apply_fixes()
    for fix in compat.fixes():
        fix.revert()
    assert _original_get_runtime_env() is original
    assert compat.applied_ids() == []


@pytest.mark.compat
def test_guard_state_singletons_apply_is_idempotent_and_revert_restores_reducer_override() -> None:
    from torch._dynamo.guards import GuardsStatePickler

    original = GuardsStatePickler.__dict__["reducer_override"]
    fix = compat.get_fix("guard-state-singletons")
    needed = compat.status(fix.id).state is compat.FixState.NEEDED
    torchkiln.apply_fixes([fix.id])
    patched = GuardsStatePickler.__dict__["reducer_override"]
    torchkiln.apply_fixes([fix.id])
    assert GuardsStatePickler.__dict__["reducer_override"] is patched  # not wrapped twice
    assert (patched is not original) == needed
    assert compat.status(fix.id).state is (compat.FixState.APPLIED if needed else compat.FixState.NOT_NEEDED)
    fix.revert()
    fix.revert()  # reverting twice is harmless
    assert GuardsStatePickler.__dict__["reducer_override"] is original


@pytest.mark.compat
@pytest.mark.parametrize("first", ["guard-state-singletons", "self-pickling-local-modules"])
def test_the_guard_state_pickler_hooks_revert_in_any_order(first: str) -> None:
    """Two fixes hook GuardsStatePickler.reducer_override through one wrapper: reverting either first leaves the
    other's hook working, and reverting both puts back torch's own method."""
    from torch._dynamo.guards import GuardsStatePickler

    ids = ["guard-state-singletons", "self-pickling-local-modules"]
    original = GuardsStatePickler.__dict__["reducer_override"]
    if not all(compat.status(i).state is compat.FixState.NEEDED for i in ids):
        pytest.skip("both fixes must be needed on this torch")
    torchkiln.apply_fixes(ids)
    (second,) = (i for i in ids if i != first)
    compat.get_fix(first).revert()
    assert compat.get_fix(second).is_applied() and not compat.get_fix(first).is_applied()
    assert not compat.get_fix(second).probe()  # its hook still runs
    assert GuardsStatePickler.__dict__["reducer_override"] is not original
    compat.get_fix(second).revert()
    assert GuardsStatePickler.__dict__["reducer_override"] is original


@pytest.mark.compat
@pytest.mark.parametrize(
    ("fix_id", "owner", "attribute"),
    [
        ("import-source-reload", "torch._dynamo.source:ImportSource", "__post_init__"),
        ("wrapped-functions", "torch._dynamo.aot_compile:AOTCompilePickler", "reducer_override"),
        ("self-pickling-local-modules", "torch._dynamo.guards:CheckFunctionManager", "serialize_guards"),
        ("static-autotuner-paths", "torch._inductor.triton_bundler:TritonBundler", "load_autotuners"),
        ("coordesc-warm-cache", "torch._inductor.runtime.triton_heuristics:CachingAutotuner", "recheck_autotune_cache"),
        ("isa-probe-without-import", "torch._inductor.cpu_vec_isa:VecISA", "_avx_py_load"),
    ],
)
def test_class_patching_fixes_apply_once_and_revert_to_torchs_function(fix_id: str, owner: str, attribute: str) -> None:
    module_name, _, class_name = owner.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    original = vars(cls)[attribute]
    fix = compat.get_fix(fix_id)
    needed = compat.status(fix_id).state is compat.FixState.NEEDED
    torchkiln.apply_fixes([fix_id])
    patched = vars(cls)[attribute]
    torchkiln.apply_fixes([fix_id])
    assert vars(cls)[attribute] is patched  # not wrapped twice
    assert (patched is not original) == needed
    if needed:
        assert not fix.probe()  # the probe that showed the bug shows it gone
    fix.revert()
    fix.revert()
    assert vars(cls)[attribute] is original


@pytest.mark.compat
def test_load_fixes_are_only_those_that_repair_a_load() -> None:
    statuses = compat.apply_load_fixes()
    load_fixes = ["import-source-reload", "static-autotuner-paths", "coordesc-warm-cache", "isa-probe-without-import"]
    assert [s.id for s in statuses] == [f.id for f in compat.fixes() if f.repairs_load] == load_fixes
    assert set(compat.applied_ids()) <= set(load_fixes)


def test_a_load_without_triton_kernels_leaves_the_triton_fixes_alone() -> None:
    statuses = compat.apply_load_fixes(triton=False)
    assert [s.id for s in statuses] == ["import-source-reload", "isa-probe-without-import"]
    assert not {"static-autotuner-paths", "coordesc-warm-cache"} & set(compat.applied_ids())


def test_shared_singletons_are_the_values_a_fresh_process_rebuilds_by_name() -> None:
    from torchkiln.compat.fixes.guard_state_singletons import is_shared_singleton

    class LocalMode(enum.Enum):  # a class defined here cannot be found by name in another process
        A = 1

    shared = (torch.float32, torch.device("cpu"), torch.strided, torch.contiguous_format, Ellipsis, NotImplemented)
    for value in (*shared, compat.FixState.APPLIED):
        assert is_shared_singleton(value), value
    for value in (LocalMode.A, object(), [torch.float32], torch.nn.Linear(1, 1), "float32", 1, None, torch.ones(1)):
        assert not is_shared_singleton(value), value


@pytest.mark.compat
def test_apply_selected_ids_only() -> None:
    statuses = torchkiln.apply_fixes(["module-globals"])
    assert [s.id for s in statuses] == ["module-globals"]
    assert set(compat.applied_ids()) <= {"module-globals"}
    assert compat.status("builtins-runtime-env").state is not compat.FixState.APPLIED


@pytest.mark.compat
def test_enable_aot_compile_is_scoped_not_global() -> None:
    import torch._dynamo.config as dynamo_config

    default = dynamo_config.enable_aot_compile
    torchkiln.apply_fixes()
    assert dynamo_config.enable_aot_compile == default  # applying flips nothing
    with compat.compile_scope():
        assert dynamo_config.enable_aot_compile or not compat.get_fix("enable-aot-compile").is_applied()
        assert hasattr(torch.compile(lambda x: x + 1, fullgraph=True), "aot_compile")
    assert dynamo_config.enable_aot_compile == default
    assert hasattr(torch.compile(lambda x: x + 1, fullgraph=True), "aot_compile") == default


# -- a fix whose torch names do not exist ------------------------------------------------------------------------
def _boom(*_: object) -> Any:
    raise ImportError("cannot import name 'CaptureOutput' (the vLLM failure mode on torch 2.9)")


GHOST = compat.Fix(
    id="ghost-fix",
    title="a fix for names this torch does not have",
    upstream="none",
    affected=SpecifierSet(">=2.0.dev0"),
    fixed_in=None,
    touches=("torch._dynamo.convert_frame.NoSuchClass.method",),
    targets_exist=lambda: False,
    probe=_boom,
    apply=_boom,
    revert=_boom,
    is_applied=_boom,
    scope=_boom,
)


@pytest.fixture
def with_ghost(monkeypatch: pytest.MonkeyPatch) -> compat.Fix:
    # The registry's own table gains one record; torch is untouched.
    real = registry._all_fixes()
    monkeypatch.setattr(registry, "_all_fixes", lambda: (*real, GHOST))
    return GHOST


@pytest.mark.compat
def test_missing_targets_report_not_applicable_and_never_raise(with_ghost: compat.Fix) -> None:
    status = compat.status(with_ghost.id)
    assert status.state is compat.FixState.NOT_APPLICABLE
    assert "NoSuchClass" in status.detail
    assert [s.state for s in torchkiln.apply_fixes([with_ghost.id])] == [compat.FixState.NOT_APPLICABLE]
    everything = {s.id: s.state for s in torchkiln.apply_fixes()}  # the whole table, ghost included
    assert everything[with_ghost.id] is compat.FixState.NOT_APPLICABLE
    assert with_ghost.id not in compat.applied_ids()
    with compat.compile_scope():  # its scope is never entered
        pass
    assert {s.id: s.state for s in torchkiln.fixes()}[with_ghost.id] is compat.FixState.NOT_APPLICABLE


def test_a_probe_that_cannot_run_counts_as_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Inside its range, a probe that crashes proves nothing: the conservative answer is "needed".
    crashing = dataclasses.replace(GHOST, id="crashing-probe", targets_exist=lambda: True, is_applied=lambda: False)
    real = registry._all_fixes()
    monkeypatch.setattr(registry, "_all_fixes", lambda: (*real, crashing))
    status = compat.status(crashing.id)
    assert status.state is compat.FixState.NEEDED and "could not run" in status.detail


# -- versions ----------------------------------------------------------------------------------------------------
def test_torch_older_than_2_10_is_refused_with_a_fix() -> None:
    with pytest.raises(UnsupportedTorchError) as info:
        check_supported(Version("2.9.1"))
    assert isinstance(info.value, RuntimeError)
    assert "2.9.1" in info.value.what and info.value.fix and "torch>=2.10" in info.value.fix
    for too_old in ("2.9.0", "2.9.0.dev20250801", "1.13.1"):
        with pytest.raises(UnsupportedTorchError):
            check_supported(Version(too_old))


@pytest.mark.parametrize("version", ["2.10.0", "2.10.0.dev20251001", "2.10.0a0+gitabc123", "2.11.0+cu130", "3.0.0"])
def test_supported_versions(version: str) -> None:
    check_supported(Version(version))


def test_running_torch_is_supported_and_parsed_without_local_part() -> None:
    check_supported()
    assert torch_version() >= MIN_TORCH
    assert torch_version() == Version(torch.__version__.split("+")[0])
    assert torch_version().local is None


@pytest.mark.parametrize(
    ("version", "inside"),
    [
        ("2.9.1", False),
        ("2.10.0.dev20250901", True),  # a nightly before 2.10: the bug was already there
        ("2.10.0a0+git1234", True),
        ("2.10.0", True),
        ("2.11.0", True),
        ("2.11.0+cu130", True),
        ("2.11.1rc1", True),
        ("2.12.0.dev20260101", False),  # 2.12 nightlies carry the upstream fix
        ("2.12.0", False),
        ("2.13.0", False),
    ],
)
def test_builtins_fix_range_covers_nightlies_and_local_builds(version: str, inside: bool) -> None:
    spec = compat.get_fix("builtins-runtime-env").affected
    assert in_range(spec, Version(version)) == inside


# -- bad targets -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [42, "model.py", torch.ones(2)], ids=["int", "str", "tensor"])
def test_invalid_target_through_compile(target: object, tmp_path: Path) -> None:
    with pytest.raises(InvalidTargetError) as info:
        torchkiln.compile(target, (torch.ones(2),), cache=tmp_path)
    error = info.value
    assert isinstance(error, TypeError)
    assert error.fix and "nn.Module" in error.what
    assert "How to fix" in str(error)


def test_lambda_target_says_define_it_at_module_level(tmp_path: Path) -> None:
    with pytest.raises(InvalidTargetError) as info:
        torchkiln.compile(lambda x: x + 1, (torch.ones(2),), cache=tmp_path)
    assert info.value.fix and "module level" in info.value.fix
