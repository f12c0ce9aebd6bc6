"""routing.py (``torchkiln.install()``) and wrappers.py in one process, without compiling anything: which
``torch.compile`` calls torchkiln serves and why the others go to torch, and what copies and pickles of the
wrappers are. The compile-and-load round trips are tests/test_dropin.py's (separate processes)."""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import torchkiln
from helpers.models import scaled_tanh, tiny_mlp
from torchkiln import compiler


@pytest.fixture
def routed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    original = torch.compile
    caplog.set_level(logging.INFO, logger="torchkiln.routing")
    torchkiln.install(cache=str(tmp_path / "cache"))
    try:
        yield caplog
    finally:
        torchkiln.uninstall()
        assert torch.compile is original


def _reason(caplog: pytest.LogCaptureFixture) -> str:
    return [r.getMessage() for r in caplog.records if r.name == "torchkiln.routing"][-1]


def test_install_is_idempotent_and_torchkilns_own_compile_stays_torchs(routed: pytest.LogCaptureFixture) -> None:
    replacement = torch.compile
    torchkiln.install()
    assert torch.compile is replacement and torchkiln.installed()
    assert compiler.torch_compile() is replacement._torchkiln_original  # type: ignore[attr-defined]
    assert torchkiln.uninstall() is True and torchkiln.uninstall() is False
    torchkiln.install()


def test_fullgraph_calls_are_served_in_every_form(routed: pytest.LogCaptureFixture) -> None:
    module = torch.compile(tiny_mlp(), fullgraph=True)
    assert isinstance(module, torchkiln.CompiledModule) and module.specializations == ()
    assert "-> torchkiln" in _reason(routed)
    assert isinstance(torch.compile(scaled_tanh, fullgraph=True, dynamic=True), torchkiln.CompiledFunction)
    decorated = torch.compile(fullgraph=True, mode="max-autotune")(scaled_tanh)
    assert isinstance(decorated, torchkiln.CompiledFunction) and decorated.__wrapped__ is scaled_tanh
    assert torch.compile(module, fullgraph=True) is module  # already served: returned as it is


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, "fullgraph=False"),
        ({"fullgraph": True, "backend": "eager"}, "backend='eager'"),
        ({"fullgraph": True, "backend": lambda gm, inputs: gm}, "torchkiln serves the inductor backend"),
        ({"fullgraph": True, "mode": "lite"}, "mode='lite' is not one torchkiln serves"),
        ({"fullgraph": True, "options": {"guard_filter_fn": None}}, "torch.compile's own hooks"),
        ({"fullgraph": True, "options": {"no_such_option": 1}}, "not an Inductor option"),
        ({"fullgraph": True, "recompile_limit": 3}, "recompile_limit=3"),
        ({"fullgraph": True, "disable": True}, "disable=True"),
    ],
)
def test_other_calls_go_to_torch_unchanged(
    routed: pytest.LogCaptureFixture, kwargs: dict[str, Any], reason: str
) -> None:
    try:
        result = torch.compile(tiny_mlp(), **kwargs)
    except Exception:  # torch's own answer to the call (e.g. an unknown option), not torchkiln's
        result = None
    assert not isinstance(result, torchkiln.CompiledModule)
    assert reason in _reason(routed), _reason(routed)


def test_a_target_torchkiln_refuses_goes_to_torch(routed: pytest.LogCaptureFixture) -> None:
    assert not isinstance(torch.compile(lambda x: x + 1, fullgraph=True), torchkiln.CompiledFunction)
    assert "a lambda has no name" in _reason(routed)


def test_torchs_own_errors_stay_torchs(routed: pytest.LogCaptureFixture) -> None:
    with pytest.raises(RuntimeError, match="Either mode or options"):
        torch.compile(tiny_mlp(), fullgraph=True, mode="max-autotune", options={"max_autotune": True})


def test_copies_and_pickles_are_lazy_wrappers_of_a_copied_model(tmp_path: Path) -> None:
    compiled = torchkiln.compile(tiny_mlp(), cache=str(tmp_path), mode="max-autotune-no-cudagraphs")
    for other in (copy.deepcopy(compiled), pickle.loads(pickle.dumps(compiled))):
        assert isinstance(other, torchkiln.CompiledModule) and other.specializations == ()
        assert other._orig_mod is not compiled._orig_mod
        assert other._torchkiln.recipe == compiled._torchkiln.recipe
        assert list(other.state_dict()) == list(compiled.state_dict())
    function = torchkiln.compile(scaled_tanh, cache=str(tmp_path))
    assert copy.deepcopy(function) is function
    again = pickle.loads(pickle.dumps(function))
    assert isinstance(again, torchkiln.CompiledFunction) and again.__wrapped__ is scaled_tanh


def test_a_copied_model_gets_a_forward_bound_to_the_copy(tmp_path: Path) -> None:
    model = tiny_mlp()
    model.forward = torchkiln.compile(model.forward, cache=str(tmp_path))  # type: ignore[method-assign]
    twin = copy.deepcopy(model)
    assert isinstance(twin.forward, torchkiln.CompiledFunction)
    assert twin.forward.__wrapped__.__self__ is twin and model.forward.__wrapped__.__self__ is model
    assert twin.forward.__name__ == "forward"


def test_bool_and_len_of_the_wrapper_are_the_models(tmp_path: Path) -> None:
    compiled = torchkiln.compile(torch.nn.Sequential(torch.nn.ReLU()), cache=str(tmp_path))
    assert len(compiled) == 1 and bool(compiled)
    assert bool(torchkiln.compile(tiny_mlp(), cache=str(tmp_path)))


class _Parent(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x) * 2
        return out


def test_a_compiled_submodule_is_traced_as_its_model_inside_its_parents_compile(tmp_path: Path) -> None:
    inner = torchkiln.compile(tiny_mlp(), cache=str(tmp_path))
    parent = torchkiln.compile(_Parent(inner), cache=str(tmp_path))
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.allclose(parent(x), inner._orig_mod(x) * 2, atol=1e-5)
    assert len(parent.specializations) == 1 and inner.specializations == ()  # one graph, the inner one inlined


def test_torchkiln_run_takes_a_module_and_its_arguments_and_passes_the_exit_code(tmp_path: Path) -> None:
    import subprocess
    import sys

    from helpers.procs import child_env

    script = tmp_path / "exits.py"
    script.write_text("import sys\nprint('args', sys.argv[1:])\nsys.exit(3)\n")
    env = child_env(tmp_path / "scratch")
    run = [sys.executable, "-m", "torchkiln", "run"]
    module = subprocess.run([*run, "-m", "platform", "--terse"], env=env, capture_output=True, text=True, check=False)
    assert module.returncode == 0 and module.stdout.strip(), module.stderr
    exits = subprocess.run([*run, str(script), "-x", "1"], env=env, capture_output=True, text=True, check=False)
    assert exits.returncode == 3 and "args ['-x', '1']" in exits.stdout, exits.stderr
    usage = subprocess.run(run, env=env, capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "name a SCRIPT or -m MODULE" in usage.stderr
