"""The targets the forward-fix round trips compile: one tiny function or model per upstream bug.

This module is imported by ``roundtrip.py`` (the helper each test runs twice, save then load, in separate
processes) under the same name in both processes, so its functions and classes resolve by reference at load.
Nothing here touches torch at import beyond defining classes; the tiny Llama is built on demand.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

import torch


def return_type(x: torch.Tensor) -> Any:
    """Lets a builtin escape the graph: the saved bytecode loads ``type`` from the builtins dict."""
    return x + 1, type


def return_range(x: torch.Tensor) -> Any:
    """Dynamo rebuilds ``range(3)`` through a ``___module_range_<id>_c<N>`` global (module-globals)."""
    return x + 1, range(3)


def plus_one(x: torch.Tensor) -> torch.Tensor:
    return x + 1


class Pair(collections.OrderedDict[str, torch.Tensor]):
    """An OrderedDict subclass returned from a forward: Dynamo rebuilds it outside the graph."""


class PairNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> Pair:
        y = self.linear(x)
        return Pair(out=y, doubled=y * 2)


def tiny_llama() -> torch.nn.Module:
    """The tiny Llama of the brief, with the same weights in every process (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
        use_cache=False,
    )
    torch.manual_seed(0)
    model: torch.nn.Module = LlamaForCausalLM(config)
    return model.eval()


def _ids() -> torch.Tensor:
    return (torch.arange(8) % 64).reshape(1, 8)


def _x() -> torch.Tensor:
    return torch.arange(4, dtype=torch.float32)


def _pair_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return PairNet().eval()


@dataclasses.dataclass(frozen=True)
class Case:
    """``make`` -> (target, example args); ``fixes``: the fixes this case proves; ``module``: nn.Module target.

    ``backend`` stays Inductor: ``aot_eager`` output cannot be saved on torch 2.11 ("expected OutputCode").
    """

    name: str
    fixes: tuple[str, ...]
    make: Callable[[], tuple[Any, tuple[Any, ...]]]
    module: bool = False
    backend: str = "inductor"


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("builtins", ("builtins-runtime-env",), lambda: (return_type, (_x(),))),
        Case("range", ("module-globals",), lambda: (return_range, (_x(),))),
        Case("plain", ("enable-aot-compile",), lambda: (plus_one, (_x(),))),
        Case("ordered-dict", ("module-globals",), lambda: (_pair_net(), (_x(),)), module=True),
        Case("llama", ("builtins-runtime-env", "module-globals"), lambda: (tiny_llama(), (_ids(),)), module=True),
    )
}


def flatten(value: Any) -> list[Any]:
    """A comparable view of a result: tensors, builtins and containers (dict subclasses keep their class name)."""
    if isinstance(value, torch.Tensor):
        return [value.detach()]
    if isinstance(value, dict):
        items: list[Any] = [type(value).__qualname__]
        for key, item in value.items():
            items += [key, *flatten(item)]
        return items
    if isinstance(value, (tuple, list)):
        return [item for element in value for item in flatten(element)]
    return [value]


def same(a: Any, b: Any) -> bool:
    left, right = flatten(a), flatten(b)
    if len(left) != len(right):
        return False
    for x, y in zip(left, right, strict=True):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                return False
            if x.shape != y.shape or not torch.allclose(x, y, atol=1e-5, rtol=1e-4):
                return False
        elif x != y:
            return False
    return True
