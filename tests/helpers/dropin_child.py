"""The fresh-process side of tests/test_dropin.py: lazy compiles, the nn.Module wrapper, modes; reports JSON.

Run as ``python tests/helpers/dropin_child.py CACHE``. Every compile is lazy (no example inputs): it compiles or
loads on the first call. Each step records the key, hit, the number of specializations and the largest difference
from eager in this process. The last stdout line is ``TKRESULT <json>``.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import torch

import torchkiln
from helpers.models import branchy, mlp_inputs, scaled_tanh, tanh_inputs, tiny_mlp


def _diff(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape or got.dtype != want.dtype:
        return float("inf")
    return float((got.double() - want.double()).abs().max())


def _step(compiled: Any, out: torch.Tensor, want: torch.Tensor, **extra: Any) -> dict[str, Any]:
    specs = compiled.specializations
    return {
        "key": compiled.key,
        "hit": compiled.hit,
        "dynamic": next((s.dynamic for s in specs if s.key == compiled.key), None),
        "specializations": [s.key for s in specs],
        "compile_s": compiled.timings.get("compile", 0.0),
        "diff": _diff(out, want),
        **extra,
    }


def lazy_sizes(cache: str) -> dict[str, Any]:
    """dynamic=None (the default): the first size static, another size of the same family dynamic."""
    model = tiny_mlp()
    compiled = torchkiln.compile(model, cache=cache)
    before = {"key": compiled.key, "hit": compiled.hit, "specializations": len(compiled.specializations)}
    steps = []
    for batch in (4, 8, 5, 4):
        (x,) = mlp_inputs(batch)
        steps.append(_step(compiled, compiled(x), model(x), batch=batch))
    return {"before": before, "steps": steps, "repr": repr(compiled)}


def module_state(cache: str) -> dict[str, Any]:
    """train/eval and dtype changes through the wrapper: each call runs only a graph built for that state."""
    model = branchy()
    compiled = torchkiln.compile(model, cache=cache)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    steps = []
    for label, change in [
        ("eval", None),
        ("train", compiled.train),
        ("eval again", compiled.eval),
        ("double", compiled.double),
        ("train double", compiled.train),
    ]:
        if change is not None:
            assert change() is compiled  # nn.Module's methods return the module they were called on
        inputs = x.double() if "double" in label else x
        steps.append(_step(compiled, compiled(inputs), model(inputs), label=label, training=model.training))
    return {"steps": steps}


def wrapper_parity(cache: str) -> dict[str, Any]:
    """What a torch.compile user relies on: state_dict keys, load_state_dict, attributes, repr, isinstance."""
    model = tiny_mlp()
    compiled = torchkiln.compile(model, cache=cache)
    optimized = torch.compile(tiny_mlp())  # torch's OptimizedModule (compiles nothing until called)
    (x,) = mlp_inputs(4)
    reference = compiled(x)
    torch.manual_seed(123)
    other = torchkiln.compile(type(model)().eval(), cache=cache)
    other.load_state_dict(compiled.state_dict())
    compiled.tk_flag = 7  # reaches the model
    attrs = {
        "fc1_is_models": compiled.fc1 is model.fc1,
        "set_reaches_model": getattr(model, "tk_flag", None) == 7,
        "orig_mod_is_model": compiled._orig_mod is model,
        "parameters_are_models": [id(p) for p in compiled.parameters()] == [id(p) for p in model.parameters()],
        "is_module": isinstance(compiled, torch.nn.Module),
        "is_compiled_module": isinstance(compiled, torchkiln.CompiledModule),
        "dir_has_fc1": "fc1" in dir(compiled),
    }
    del compiled.tk_flag
    attrs["del_reaches_model"] = not hasattr(model, "tk_flag")
    out = other(x)
    return {
        "keys": list(compiled.state_dict()),
        "torch_keys": list(optimized.state_dict()),
        "loaded_diff": _diff(out, reference),
        "loaded_key": other.key,
        "key": compiled.key,
        "loaded_hit": other.hit,
        "attrs": attrs,
        "repr": repr(compiled),
    }


def modes(cache: str) -> dict[str, Any]:
    """A function target (CompiledFunction), default mode and max-autotune: two keys, both round trips."""
    x, y = tanh_inputs(4)
    results = {}
    for mode in (None, "max-autotune"):
        compiled = torchkiln.compile(scaled_tanh, cache=cache, mode=mode)
        out = compiled(x, y)
        header = compiled.header
        options = header.cache_key.part("options") if header is not None else None
        results[str(mode)] = _step(
            compiled,
            out,
            scaled_tanh(x, y),
            type=type(compiled).__name__,
            name=compiled.__name__,
            key_options=options.description["options"] if options is not None else None,
        )
    return results


def main(argv: list[str]) -> int:
    cache = argv[1]
    torch.set_grad_enabled(False)
    result: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for scenario in (lazy_sizes, module_state, wrapper_parity, modes):
            result[scenario.__name__] = scenario(cache)
    result["warnings"] = [str(w.message) for w in caught if issubclass(w.category, torchkiln.TorchkilnWarning)]
    sys.stdout.write("TKRESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
