"""The targets the forward-fix round trips compile: one tiny function or model per upstream bug.

This module is imported by ``roundtrip.py`` (the helper each test runs twice, save then load, in separate
processes) under the same name in both processes, so its functions and classes resolve by reference at load.
Nothing here touches torch at import beyond defining classes; the tiny Llama is built on demand.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
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


def _checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


@_checked
def wrapped_double(x: torch.Tensor) -> torch.Tensor:
    """Behind a functools.wraps wrapper: the original, in the wrapper's closure, is not ``wrapped_double``
    (wrapped-functions)."""
    return x * 2


def _norm_of_difference(pos: torch.Tensor) -> torch.Tensor:
    return torch.linalg.norm(pos[1] - pos[0])


def vmap_grad(x: torch.Tensor) -> torch.Tensor:
    """Its guard state names an ImportSource, which cannot be unpickled outside a trace (import-source-reload)."""
    import torch.func as tf

    out: torch.Tensor = tf.vmap(tf.grad(_norm_of_difference))(x)
    return out


class Pair(collections.OrderedDict[str, torch.Tensor]):
    """An OrderedDict subclass returned from a forward: Dynamo rebuilds it outside the graph."""


class PairNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> Pair:
        y = self.linear(x)
        return Pair(out=y, doubled=y * 2)


class DtypeAttr(torch.nn.Module):
    """Holds a dtype its forward never reads (guard-state-singletons): every load fails without the fix."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.unused_dtype = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(x).relu()
        return out


class DeviceAttr(torch.nn.Module):
    """Holds a torch.device its forward never reads: device objects are not interned, so only it is pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.unused_device = torch.device("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(x).relu()
        return out


class Mode(enum.Enum):
    FAST = 1
    SLOW = 2


class EnumAttr(torch.nn.Module):
    """Holds an enum member it never reads, and the same member in a list it does read.

    The list element's ``ID_MATCH`` guard cannot be serialized (the guard filter drops it), so it gets no guard
    manager, and without the fix the saved copy of ``schedule[0]`` is ``_Missing`` too (the load still works).
    """

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.unused_mode = Mode.FAST
        self.schedule = [Mode.FAST]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(x).relu()
        if self.schedule[0] is Mode.FAST:
            out = out * 2
        return out


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


#: PaliGemma: a 32x32 image in 8x8 patches is 16 image tokens; the last vocabulary id is the image token.
PALIGEMMA_VOCAB = 128


def tiny_paligemma() -> torch.nn.Module:
    """PaliGemmaForConditionalGeneration from a tiny config (SigLIP + Gemma), seeded; ``PaliGemmaModel.__init__``
    sets ``self.text_config_dtype`` (a dtype its forward never reads): the guard-state-singletons bug."""
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vision_use_head=False,
    )
    text = GemmaConfig(
        vocab_size=PALIGEMMA_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        use_cache=False,
    )
    config = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=PALIGEMMA_VOCAB - 1,
        vocab_size=PALIGEMMA_VOCAB,
        projection_dim=32,
        hidden_size=32,
    )
    config.use_cache = False
    torch.manual_seed(0)
    model: torch.nn.Module = PaliGemmaForConditionalGeneration(config)
    return model.eval()


def paligemma_kwargs() -> dict[str, Any]:
    """16 image tokens, then 8 text tokens; ``token_type_ids`` (0: image and prefix, 1: suffix) is passed because
    without it eager and Dynamo build different attention masks (logits differ by ~3e-2, torch 2.13)."""
    generator = torch.Generator().manual_seed(14)
    text = torch.randint(0, PALIGEMMA_VOCAB - 1, (1, 8), generator=generator)
    image = torch.full((1, 16), PALIGEMMA_VOCAB - 1, dtype=torch.long)
    input_ids = torch.cat([image, text], dim=1)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 20:] = 1
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(15))
    return {
        "input_ids": input_ids,
        "pixel_values": pixel_values,
        "token_type_ids": token_type_ids,
        "use_cache": False,
    }


def _ids() -> torch.Tensor:
    return (torch.arange(8) % 64).reshape(1, 8)


def _x() -> torch.Tensor:
    return torch.arange(4, dtype=torch.float32)


def _pair_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return PairNet().eval()


def _seeded(cls: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def _x8() -> torch.Tensor:
    return torch.arange(32, dtype=torch.float32).reshape(4, 8) / 32


SINGLETONS = "guard-state-singletons"


@dataclasses.dataclass(frozen=True)
class Case:
    """``make`` -> (target, example args); ``fixes``: the fixes this case proves; ``module``: nn.Module target.

    ``backend`` stays Inductor: ``aot_eager`` output cannot be saved on torch 2.11 ("expected OutputCode").
    ``kwargs``: keyword inputs of the call (a fresh, identical dict on every call).
    """

    name: str
    fixes: tuple[str, ...]
    make: Callable[[], tuple[Any, tuple[Any, ...]]]
    module: bool = False
    backend: str = "inductor"
    kwargs: Callable[[], dict[str, Any]] = dict
    #: a raw save uses torchkiln's guard filter (modules always do): torch's default rejects a guard of the target
    torchkiln_filter: bool = False


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("builtins", ("builtins-runtime-env",), lambda: (return_type, (_x(),))),
        Case("range", ("module-globals",), lambda: (return_range, (_x(),))),
        Case("plain", ("enable-aot-compile",), lambda: (plus_one, (_x(),))),
        Case("wraps", ("wrapped-functions",), lambda: (wrapped_double, (_x(),))),
        Case(
            "vmap",
            ("import-source-reload",),
            lambda: (vmap_grad, (torch.arange(24.0).reshape(4, 2, 3) / 24,)),
            torchkiln_filter=True,  # torch's default filter: "DICT_VERSION guard cannot be serialized"
        ),
        Case("ordered-dict", ("module-globals",), lambda: (_pair_net(), (_x(),)), module=True),
        Case(
            "llama",
            ("builtins-runtime-env", "module-globals", "self-pickling-local-modules"),
            lambda: (tiny_llama(), (_ids(),)),
            module=True,
        ),
        Case("dtype-attr", (SINGLETONS,), lambda: (_seeded(DtypeAttr), (_x8(),)), module=True),
        Case("device-attr", (SINGLETONS,), lambda: (_seeded(DeviceAttr), (_x8(),)), module=True),
        Case("enum-attr", (SINGLETONS,), lambda: (_seeded(EnumAttr), (_x8(),)), module=True),
        Case("paligemma", (SINGLETONS,), lambda: (tiny_paligemma(), ()), module=True, kwargs=paligemma_kwargs),
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
