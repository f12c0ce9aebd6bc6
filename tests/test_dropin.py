"""Drop-in use (issue 13): lazy ``torchkiln.compile(model)``, the nn.Module wrapper, torch.compile's parameters,
``torchkiln.install()`` on calls made inside a library, and ``torchkiln run``.

Every claim about a load is checked across processes: one fresh process compiles into a temporary cache, another
(empty Inductor caches) loads; each process runs all of its scenarios (tests/helpers/dropin_child.py,
install_child.py, run_program.py) so that torch is imported a few times, not once per test.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import HELPERS, parse_result, run_script

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU backend needs g++")

TOL = 1e-5


def _run(script: str, cache: Path, scratch: Path) -> dict[str, Any]:
    proc = run_script([str(HELPERS / script), str(cache)], scratch)
    return parse_result(proc.stdout)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dropin")


@pytest.fixture(scope="module")
def built(work: Path) -> dict[str, Any]:
    return _run("dropin_child.py", work / "cache", work / "built")


@pytest.fixture(scope="module")
def loaded(built: dict[str, Any], work: Path) -> dict[str, Any]:
    return _run("dropin_child.py", work / "cache", work / "loaded")


# -- lazy compile, dynamic=None ---------------------------------------------------------------------------------
def test_lazy_compile_does_nothing_before_the_first_call(built: dict[str, Any]) -> None:
    assert built["lazy_sizes"]["before"] == {"key": "", "hit": False, "specializations": 0}
    first = built["lazy_sizes"]["steps"][0]
    assert first["hit"] is False and first["compile_s"] > 0 and first["diff"] <= TOL
    assert "compiles or loads on the first call" not in built["lazy_sizes"]["repr"]
    assert built["warnings"] == []


def test_dynamic_none_compiles_the_first_size_static_and_another_size_dynamic(built: dict[str, Any]) -> None:
    four, eight, five, four_again = built["lazy_sizes"]["steps"]
    assert four["dynamic"] is False and eight["dynamic"] is True
    assert eight["key"] != four["key"] and eight["specializations"] == [four["key"], eight["key"]]
    # batch 5 and batch 4 again: served by what exists, nothing new compiled
    assert five["key"] == eight["key"] and five["specializations"] == eight["specializations"]
    assert four_again["specializations"] == eight["specializations"]
    assert all(step["diff"] <= TOL for step in built["lazy_sizes"]["steps"])


def test_lazy_compile_loads_every_specialization_in_a_fresh_process(
    built: dict[str, Any], loaded: dict[str, Any]
) -> None:
    for before, after in zip(built["lazy_sizes"]["steps"], loaded["lazy_sizes"]["steps"], strict=True):
        assert after["key"] == before["key"] and after["dynamic"] == before["dynamic"]
        assert after["hit"] is True and after["compile_s"] == 0.0 and after["diff"] <= TOL
    assert loaded["warnings"] == []


# -- the nn.Module wrapper --------------------------------------------------------------------------------------
def test_train_eval_and_dtype_never_run_a_graph_built_for_the_other(
    built: dict[str, Any], loaded: dict[str, Any]
) -> None:
    for run in (built, loaded):
        steps = {step["label"]: step for step in run["module_state"]["steps"]}
        # outputs equal eager in every state: x3 in eval, x2 in train, in float32 and float64
        assert all(step["diff"] == 0.0 for step in steps.values()), steps
        assert steps["train"]["training"] is True and steps["eval"]["training"] is False
        assert steps["train"]["key"] != steps["eval"]["key"]
        assert steps["eval again"]["key"] == steps["eval"]["key"]  # back to the first graph, not a new one
        assert len(steps["eval again"]["specializations"]) == 2
        assert len({steps[k]["key"] for k in ("eval", "train", "double", "train double")}) == 4
    assert all(step["hit"] for step in loaded["module_state"]["steps"])
    assert [s["key"] for s in built["module_state"]["steps"]] == [s["key"] for s in loaded["module_state"]["steps"]]


def test_state_dict_attributes_and_repr_are_those_of_torch_compile(built: dict[str, Any]) -> None:
    parity = built["wrapper_parity"]
    assert parity["keys"] == parity["torch_keys"]
    assert all(key.startswith("_orig_mod.") for key in parity["keys"])
    # weights loaded into another compiled model of the same architecture: its outputs, and the same artifact
    assert parity["loaded_diff"] == 0.0 and parity["loaded_key"] == parity["key"] and parity["loaded_hit"] is True
    assert all(parity["attrs"].values()), parity["attrs"]
    assert parity["repr"].startswith("CompiledModule(\n  torchkiln: 1 specialization")
    assert "(_orig_mod): TinyMLP(" in parity["repr"]


# -- torch.compile's parameters ---------------------------------------------------------------------------------
def test_mode_is_in_the_key_and_round_trips(built: dict[str, Any], loaded: dict[str, Any]) -> None:
    default, autotune = built["modes"]["None"], built["modes"]["max-autotune"]
    assert default["type"] == "CompiledFunction" and default["name"] == "scaled_tanh"
    assert default["key"] != autotune["key"]
    assert "mode" not in default["key_options"] and autotune["key_options"]["mode"] == "max-autotune"
    for mode, before in built["modes"].items():
        after = loaded["modes"][mode]
        assert after["key"] == before["key"] and after["hit"] is True and after["compile_s"] == 0.0
        assert after["diff"] <= TOL


@pytest.mark.parametrize(
    ("mode", "options", "triton", "tunes_at_compile"),
    [
        ("max-autotune", None, True, True),
        ("max-autotune-no-cudagraphs", None, True, True),
        (None, {"max_autotune": True}, True, True),
        (None, {"coordinate_descent_tuning": True}, True, True),
        ("reduce-overhead", None, True, True),  # its pointwise kernels still have several launch configs
        (None, None, True, True),
        (None, {"max_autotune": True, "triton.autotune_at_compile_time": False}, True, False),  # the caller's choice
        ("max-autotune", None, False, None),  # a CPU compile has no Triton kernels: its options stay torch's
        (None, None, False, None),
    ],
)
def test_triton_compiles_tune_launch_configs_at_compile_time(
    mode: str | None, options: dict[str, Any] | None, triton: bool, tunes_at_compile: bool | None
) -> None:
    # what the artifact then carries (.best_config files) is proven on a GPU: tests/gpu/test_gpu_modes.py
    from torchkiln.inductor_options import AUTOTUNE_AT_COMPILE_TIME, inductor_options

    merged = inductor_options(mode, options, dynamic=False, triton=triton)
    assert merged.get(AUTOTUNE_AT_COMPILE_TIME) is tunes_at_compile


# -- torchkiln.install() ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def installed_runs(work: Path) -> list[dict[str, Any]]:
    cache = work / "install-cache"
    return [_run("install_child.py", cache, work / f"install-{i}") for i in range(2)]


SERVED = ("module_at_import", "decorated_function", "decorated_method", "bound_forward_4", "bound_forward_7")


def test_install_serves_torch_compile_calls_made_inside_a_library(installed_runs: list[dict[str, Any]]) -> None:
    first, second = installed_runs
    for name in SERVED:
        assert first[name]["diff"] <= TOL and second[name]["diff"] <= TOL, name
        assert first[name]["type"] in ("CompiledModule", "CompiledFunction"), first[name]
        assert first[name]["hit"] is False and second[name]["hit"] is True, name
        assert second[name]["key"] == first[name]["key"], name
    assert first["module_at_import"]["type"] == "CompiledModule"
    # model.forward = torch.compile(model.forward, fullgraph=True, dynamic=True): one artifact for both sizes
    assert second["bound_forward_7"]["specializations"] == 1
    assert first["warnings"] == [] and second["warnings"] == []


def test_install_hands_every_other_call_to_torch_and_says_why(installed_runs: list[dict[str, Any]]) -> None:
    run = installed_runs[0]
    assert run["not_fullgraph"] == "function"  # what torch.compile returns for a function: torch's own wrapper
    log = "\n".join(run["routing_log"])
    assert "torch.compile(tk_library.cosine_plus_one) -> torch: fullgraph=False" in log
    assert "torch.compile(tk_library.Scorer) -> torchkiln" in log
    assert "torch.compile(tk_library.gelu_mix) -> torchkiln" in log


def test_uninstall_gives_torch_compile_back(installed_runs: list[dict[str, Any]]) -> None:
    run = installed_runs[0]
    assert run["installed"] is True and run["uninstalled"] is True and run["installed_after"] is False
    assert run["after_uninstall"] == "OptimizedModule"


# -- torchkiln run ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def program_runs(work: Path) -> list[dict[str, Any]]:
    cache = work / "run-cache"
    program = HELPERS / "run_program.py"
    runs = []
    for i in range(2):
        argv = ["-m", "torchkiln", "run", "--cache", str(cache), str(program), "--flag", "value"]
        runs.append(parse_result(run_script(argv, work / f"run-{i}").stdout))
    return runs


def test_torchkiln_run_routes_a_program_and_its_child_processes(program_runs: list[dict[str, Any]]) -> None:
    first, second = program_runs
    for run in program_runs:
        assert run["type"] == "CompiledModule" and run["diff"] <= TOL
        assert run["main"] == "__main__" and run["argv"][1:] == ["--flag", "value"]
        assert run["child_routed"] is True, run["child_stderr"]
    assert first["hit"] is False and second["hit"] is True


def test_a_bad_install_setting_does_not_stop_an_interpreter(tmp_path: Path) -> None:
    from torchkiln import _startup

    code = "import torch; print('routed', hasattr(torch.compile, '_torchkiln_original'))"
    proc = run_script(
        ["-c", code],
        tmp_path,
        extra_env={"TORCHKILN_INSTALL": "maybe"},
        pythonpath=[_startup.BOOTSTRAP_DIR],
    )
    assert "routed False" in proc.stdout
    assert "TORCHKILN_INSTALL='maybe'" in proc.stderr and "set TORCHKILN_INSTALL=1" in proc.stderr


def test_the_bootstrap_runs_the_sitecustomize_it_shadows(tmp_path: Path) -> None:
    from torchkiln import _startup

    other = tmp_path / "site"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['TK_SHADOWED_RAN'] = '1'\n")
    code = (
        "import os, sys; print('shadowed', os.environ.get('TK_SHADOWED_RAN')); print('torch', 'torch' in sys.modules)"
    )
    proc = run_script(
        ["-c", code],
        tmp_path / "scratch",
        extra_env={"TORCHKILN_INSTALL": "1"},
        pythonpath=[_startup.BOOTSTRAP_DIR, other],
    )
    assert "shadowed 1" in proc.stdout
    assert "torch False" in proc.stdout  # the hook waits for the program's own `import torch`
