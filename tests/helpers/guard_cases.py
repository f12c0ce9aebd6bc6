"""Targets and the changes that alter their traced graph: the cross-process correctness suite's material.

Each case names one thing Dynamo specializes on (a Python attribute, a module global, a class attribute, a
closure cell, a config attribute, train/eval, a submodule's class, parameter dtype, requires_grad, torch global
state) or one that must *not* split the cache (weights, cwd, unrelated environment variables). ``run_case`` applies
it in a fresh process (tests/helpers/guard_case_child.py), calls ``torchkiln.compile`` and compares with eager.

Module globals read at import come from the environment, as a deployment knob would: ``TK_KNOB_SCALE`` (a float
the forward multiplies by), ``TK_CLOSURE_SCALE`` (the cell of a closure the function target calls) and
``TK_HUB_FUNC`` (which function a self-pickling local module class wraps, as kernels wraps transformers' functions).
"""

from __future__ import annotations

import contextlib
import copy
import enum
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

SCALE = float(os.environ.get("TK_KNOB_SCALE", "1.0"))


class Mode(enum.Enum):
    ADD = "add"
    SUB = "sub"


class TinyConfig:
    """An HF-style config object: forward reads ``self.config.mult``."""

    def __init__(self, mult: float = 1.0) -> None:
        self.mult = mult


class Knobs(nn.Module):
    """Reads one of everything Dynamo guards on."""

    OFFSET = 0.5  # a class attribute

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.act: nn.Module = nn.ReLU()
        self.norm = nn.BatchNorm1d(8)
        self.flag = True
        self.repeats = 1
        self.gain = 1.0
        self.kind = "plain"
        self.mode = Mode.ADD
        self.config = TinyConfig()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.act(self.lin(x))) * SCALE * self.gain * self.config.mult + self.OFFSET
        for _ in range(self.repeats):
            y = y + 1.0
        if self.flag:
            y = y * 2.0
        if self.kind == "shifted":
            y = y - 3.0
        y = y + 1.0 if self.mode is Mode.ADD else y - 1.0
        # a tensor created here takes the default dtype: the graph bakes it in
        return y + torch.ones(8, dtype=torch.get_default_dtype()).to(y.dtype)


def make_knobs() -> Knobs:
    torch.manual_seed(0)
    model = Knobs()
    model.norm.running_mean.fill_(0.1)
    model.norm.running_var.fill_(2.0)
    return model.eval()


def knob_inputs() -> tuple[torch.Tensor]:
    return (torch.randn(4, 8, generator=torch.Generator().manual_seed(3)),)


def make_scaler(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def scale(x: torch.Tensor) -> torch.Tensor:
        return x * factor

    return scale


_scale = make_scaler(float(os.environ.get("TK_CLOSURE_SCALE", "2.0")))


def closure_target(x: torch.Tensor) -> torch.Tensor:
    """A function target whose graph depends on a closure cell (``_scale``'s ``factor``)."""
    return _scale(torch.sin(x)) + 1.0


def closure_inputs() -> tuple[torch.Tensor]:
    return (torch.randn(4, 8, generator=torch.Generator().manual_seed(5)),)


# A function turned into a module of a local class, the shape transformers >= 5.25 gives ``apply_rotary_pos_emb``
# (kernels' ``_create_func_module``, through ``@use_kernel_func_from_hub`` and ``@use_kernelized_func``): the class
# says how to pickle itself, through the module global it wraps (compat fix ``self-pickling-local-modules``).
def make_func_module(func: Callable[[torch.Tensor], torch.Tensor], name: str) -> type[nn.Module]:
    class Func(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return func(x)

        def __reduce__(self) -> Any:
            if globals().get(name) is self:
                return name
            return (rebuild_func_module, (name,), self.__dict__.copy())

    Func.__module__ = __name__
    return Func


def rebuild_func_module(name: str) -> nn.Module:
    module: nn.Module = type(globals()[name])()
    return module


def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0


def _triple(x: torch.Tensor) -> torch.Tensor:
    return x * 3.0


#: which function the wrapper wraps, chosen at import as a deployment would (``TK_HUB_FUNC``)
hub_scale = make_func_module(_triple if os.environ.get("TK_HUB_FUNC") == "triple" else _double, "hub_scale")()


class HubFuncNet(nn.Module):
    """Calls its own instance of the wrapper class, as a transformers attention layer calls ``_kernel_funcs``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self._kernel_funcs = {"scale": type(hub_scale)()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._kernel_funcs["scale"](self.lin(x)) + 1.0


def make_hub_func_net() -> HubFuncNet:
    torch.manual_seed(0)
    return HubFuncNet().eval()


# -- the changes ------------------------------------------------------------------------------------------------
def _set(attr: str, value: Any) -> Callable[[Knobs], None]:
    def change(model: Knobs) -> None:
        setattr(model, attr, value)

    return change


def _new_weights(model: Knobs) -> None:
    torch.manual_seed(1234)
    fresh = Knobs()
    model.load_state_dict(fresh.state_dict())


def _swap_activation(model: Knobs) -> None:
    model.act = nn.GELU()


def _half_weights(model: Knobs) -> None:
    model.to(torch.float64)


def _train(model: Knobs) -> None:
    model.train()


def _config(model: Knobs) -> None:
    model.config.mult = 3.0


def _class_attribute(model: Knobs) -> None:
    type(model).OFFSET = 2.5


@contextlib.contextmanager
def _no_context() -> Iterator[None]:
    yield


@contextlib.contextmanager
def _default_dtype() -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


@contextlib.contextmanager
def _autocast() -> Iterator[None]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yield


@contextlib.contextmanager
def _no_grad() -> Iterator[None]:
    with torch.no_grad():
        yield


#: name -> (target, change of the model, context the call runs in, input change, environment, must it hit?)
#: ``must_hit``: True = must load the baseline artifact; False = must not (a miss or another specialization).
CASES: dict[str, dict[str, Any]] = {
    # what changes the graph
    "bool_attribute": {"change": _set("flag", False)},
    "int_attribute": {"change": _set("repeats", 3)},
    "float_attribute": {"change": _set("gain", 0.25)},
    "str_attribute": {"change": _set("kind", "shifted")},
    "enum_attribute": {"change": _set("mode", Mode.SUB)},
    "module_global": {"env": {"TK_KNOB_SCALE": "3.0"}},
    "class_attribute": {"change": _class_attribute},
    "config_attribute": {"change": _config},
    "train_mode": {"change": _train},
    "submodule_class": {"change": _swap_activation},
    "parameter_dtype": {"change": _half_weights, "inputs": "float64"},
    "requires_grad_input": {"inputs": "requires_grad"},
    "grad_mode": {"context": _no_grad},
    "default_dtype": {"context": _default_dtype},
    "autocast": {"context": _autocast},
    "deterministic": {"context": _deterministic},
    "closure_cell": {"target": "closure", "env": {"TK_CLOSURE_SCALE": "5.0"}},
    "hub_func_swapped": {"target": "hub_func", "env": {"TK_HUB_FUNC": "triple"}},  # the wrapped function
    "num_threads": {"env": {"OMP_NUM_THREADS": "1"}},  # in Dynamo's GLOBAL_STATE guard
    # what must not split the cache
    "same": {"must_hit": True},
    "new_weights": {"change": _new_weights, "must_hit": True},
    "other_cwd": {"cwd": True, "must_hit": True},
    "unrelated_env": {
        "env": {"HOSTNAME": "another-host", "POD_NAME": "pod-7", "TK_UNRELATED": "1", "CUDA_VISIBLE_DEVICES": ""},
        "must_hit": True,
    },
    "closure_same": {"target": "closure", "must_hit": True},
    "hub_func_same": {"target": "hub_func", "must_hit": True},
}


def build(case: str) -> tuple[Any, tuple[torch.Tensor, ...], Callable[[], contextlib.AbstractContextManager[None]]]:
    """The target with the case's change applied, its inputs, and the context the call runs in."""
    spec = CASES[case]
    if spec.get("target") == "closure":
        return closure_target, closure_inputs(), spec.get("context", _no_context)
    if spec.get("target") == "hub_func":
        return make_hub_func_net(), knob_inputs(), spec.get("context", _no_context)
    model = make_knobs()
    if "change" in spec:
        spec["change"](model)
    (x,) = knob_inputs()
    if spec.get("inputs") == "float64":
        x = x.to(torch.float64)
    elif spec.get("inputs") == "requires_grad":
        x = x.clone().requires_grad_(True)
    return model, (x,), spec.get("context", _no_context)


def eager(target: Any, inputs: tuple[torch.Tensor, ...]) -> Any:
    """The reference: a copy of the module (train-mode BatchNorm updates its buffers on every call)."""
    reference = copy.deepcopy(target) if isinstance(target, nn.Module) else target
    return reference(*inputs)
