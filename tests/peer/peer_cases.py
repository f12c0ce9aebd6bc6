"""The targets of PyTorch main's ``test/dynamo/test_aot_compile.py``, ported so that a fresh process can build them.

Each upstream test compiles a function or module with ``torch.compile(...).aot_compile``, saves it, and loads it
(in the same process). Here each becomes a ``Case``: ``peer_roundtrip.py`` compiles it through
``torchkiln.compile`` in one process and loads it (``strict=True``) in another. This module is imported under the
same name in both processes, so its functions, classes and factories resolve by reference at load. Upstream's
test-only ``CustomCompiledFunction`` backend is replaced by Inductor (or the named backend the test used): torchkiln
saves what torch's own backends produce.

Left out (no meaning across processes through torchkiln): ``test_code_cache``, ``test_aot_compile_source_info``,
``test_aot_module_simplified_serializable_*`` (torch internals), ``test_aot_compile_graph_break_error_fmt`` and
``test_guard_filter_override_aot`` (compile-time error text of torch's own API),
``test_aot_compile_disable_guard_check`` (a torch switch torchkiln does not expose), ``test_fullgraph_capture_*``
(export, not aot_compile), ``test_aot_compile_with_captured_module*`` (``external_data``),
``test_aot_cache_predicate_not_pickleable`` (the FX graph cache, not aot_compile), the GPU/AOTInductor and DTensor
tests (no GPU, no process group here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

#: upstream's ``EPS = torch.tensor(1e-7)``, read by ``fn`` in ``test_aot_compile_with_global_tensor``
EPS = torch.tensor(1e-7)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- functions -------------------------------------------------------------------------------------------------
def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``test_aot_compile_basic_fn[_inductor]``, ``test_eager_backend``, ``test_aot_eager_backend``."""
    return x + y


def add_eps(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``test_aot_compile_with_global_tensor``: a module-level tensor read as a global."""
    return x + y + EPS


def double_with_default(x: torch.Tensor, y: int = 1) -> torch.Tensor:
    """``test_aot_compile_with_default_args``."""
    return x + x


def autocast_fn(x: torch.Tensor) -> torch.Tensor:
    """``test_aot_compile_autocast_guard_reload``: compiled and called under CPU bf16 autocast."""
    return x + 1 * x


def subtract(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``test_aot_compile_grad_mode_after_prior_compile``: compiled and called under no_grad."""
    return x - y


class MooType:
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x


def make_moo(x: torch.Tensor, y: torch.Tensor) -> MooType:
    """``test_external_refs_validation``: returns an instance of a module-level class built outside the graph."""
    return MooType(x + y)


def return_type(x: torch.Tensor) -> Any:
    """``test_builtins_dict_survives_serialization``."""
    return x + 1, type


def with_checkpoint(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``test_aot_compile_with_checkpoint``: a nested helper run under non-reentrant activation checkpointing."""
    from torch.utils.checkpoint import checkpoint

    def compute(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x * 2 + y * 3

    out: torch.Tensor = checkpoint(compute, x, y, use_reentrant=False)
    return out


def _norm_of_difference(pos: torch.Tensor) -> torch.Tensor:
    return torch.linalg.norm(pos[1] - pos[0])


def vmap_grad(x: torch.Tensor) -> torch.Tensor:
    """``test_aot_compile_torch_func_vmap_grad``; upstream compiles the functorch transform object itself, which
    is no module-level function, so the transform is applied inside one."""
    import torch.func as tf

    out: torch.Tensor = tf.vmap(tf.grad(_norm_of_difference, argnums=0), in_dims=(0,))(x)
    return out


def pytree_pair(xy: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``test_aot_compile_portable_guards_unsafe``: one tuple argument (upstream calls it with a namedtuple under
    ``keep_portable_guards_unsafe``; torchkiln keeps the input's type guard, so the port calls it with a tuple)."""
    return xy[0] + xy[1]


def regional(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``test_regional_inductor_backend``: only the annotated region goes through Inductor."""
    import torch.fx.traceback as fx_traceback

    sin = torch.sin(x)
    with fx_traceback.annotate({"compile_with_inductor": 0}):
        mul = sin * y
        add = mul + 1
    return torch.sin(add)


def check_inputs_plain(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``test_decorated_function_aot``'s decorator: no functools.wraps, so the wrapper is ``...<locals>._fn``."""

    def _fn(*args: Any, **kwargs: Any) -> Any:
        for arg in args:
            assert arg.shape[0] > 1
        return fn(*args, **kwargs)

    return _fn


def check_inputs_wraps(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``test_decorated_function_with_functools_wrap_aot``'s decorator: the wrapper takes ``fn``'s names."""

    @functools.wraps(fn)
    def _fn(*args: Any, **kwargs: Any) -> Any:
        for arg in args:
            assert arg.shape[0] > 1
        return fn(*args, **kwargs)

    return _fn


@check_inputs_plain
def decorated_plain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x + x) + (y + y)


@check_inputs_wraps
def decorated_foo(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x + x) + (y + y)


def make_closure(tmp: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``test_aot_compile_with_closure_save_and_load``: a nested function reading a closure cell."""

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y + tmp

    return fn


def make_scale(k: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def scale(x: torch.Tensor) -> torch.Tensor:
        return x * k

    return scale


def make_apply(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A nested function whose closure holds another nested function (with a closure of its own)."""

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return f(x) + y

    return fn


# -- modules ---------------------------------------------------------------------------------------------------
class SimpleLinearModule(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out


class RepeatInterleaveModule(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunk = x.chunk(2, dim=-1)
        return chunk[0].repeat_interleave(2, dim=-1)


class MultiModalMixin(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = super().forward(x)  # type: ignore[misc]
        return out


class TextModel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class TestVLLMModel(MultiModalMixin, TextModel):
    """``test_aot_compile_with_super_call``: ``forward`` closes over ``__class__`` (zero-argument super())."""

    __test__ = False  # not a pytest class

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


class SingleCondModel(torch.nn.Module):
    """The dynamic-shape ``torch.cond`` model of upstream's suite: the predicate is a SymBool on the batch size."""

    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(d, d)
        self.fc2 = torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)

        def true_fn(x: torch.Tensor) -> torch.Tensor:
            return x * 2.0

        def false_fn(x: torch.Tensor) -> torch.Tensor:
            return x * 3.0

        x = torch.cond(x.shape[0] < 32, true_fn, false_fn, (x,))
        out: torch.Tensor = self.fc2(x)
        return out


def _seeded(cls: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls().eval()


@contextlib.contextmanager
def _autocast() -> Iterator[None]:
    with torch.amp.autocast("cpu", dtype=torch.bfloat16):
        yield


@dataclasses.dataclass(frozen=True)
class Case:
    """``make`` -> (target, example args); ``calls`` -> further argument tuples the loaded artifact must answer
    like eager (same process, after the example call); ``context``: entered around compile and every call."""

    name: str
    upstream: str  # the test of test_aot_compile.py it ports
    make: Callable[[], tuple[Any, tuple[Any, ...]]]
    backend: str | Callable[[], Any] = "inductor"
    dynamic: bool | None = None
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    calls: Callable[[], list[tuple[Any, ...]]] = list
    grad: bool = False  # compare gradients of the inputs too (backward through the loaded artifact)
    #: what the loading process builds instead of ``make()`` (the same code with another closure): the soundness
    #: cases, loaded with ``strict=False`` and judged by their results alone (a guard miss then compiles)
    load_make: Callable[[], tuple[Any, tuple[Any, ...]]] | None = None
    slow: bool = False  # more than a few seconds of compile on 2 cores: the slow lane only


def _xy(*shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _rand(*shape, seed=1), _rand(*shape, seed=2)


def _xy_grad() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _xy(3, 4)
    return x.requires_grad_(), y.requires_grad_()


def aot_eager_regional_inductor() -> Any:
    from torch._dynamo.backends.common import aot_autograd
    from torch.fx.passes.regional_inductor import regional_inductor

    return aot_autograd(fw_compiler=regional_inductor, bw_compiler=regional_inductor)


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("basic_fn_inductor", "test_aot_compile_basic_fn_inductor", lambda: (add, _xy(3, 4))),
        Case("eager_backend", "test_eager_backend", lambda: (add, _xy(3, 4)), backend="eager"),
        Case("aot_eager_backend", "test_aot_eager_backend", lambda: (add, _xy(3, 4)), backend="aot_eager"),
        Case(
            "basic_forward",
            "test_aot_compile_basic_forward",
            lambda: (_seeded(SimpleLinearModule), _xy(3, 3)[:1]),
            slow=True,
        ),
        Case(
            "repeat_interleave",
            "test_aot_compile_repeat_interleave",
            lambda: (RepeatInterleaveModule(), (_rand(2, 4),)),
            slow=True,
        ),
        Case(
            "autocast",
            "test_aot_compile_autocast_guard_reload",
            lambda: (autocast_fn, (_rand(3, 4),)),
            context=_autocast,
            slow=True,
        ),
        Case(
            "grad_mode",
            "test_aot_compile_grad_mode_after_prior_compile",
            lambda: (subtract, _xy(3, 4)),
            context=torch.no_grad,
            slow=True,
        ),
        Case(
            "decorated",
            "test_decorated_function_aot",
            lambda: (decorated_plain, (torch.ones(3), torch.ones(3))),
            slow=True,
        ),
        Case(
            "decorated_wraps",
            "test_decorated_function_with_functools_wrap_aot",
            lambda: (decorated_foo, (torch.ones(3), torch.ones(3))),
        ),
        Case(
            "vmap_grad",
            "test_aot_compile_torch_func_vmap_grad",
            lambda: (vmap_grad, (_rand(64, 2, 3).double(),)),
            slow=True,
        ),
        Case(
            "regional_inductor",
            "test_regional_inductor_backend",
            lambda: (regional, _xy_grad()),
            backend=aot_eager_regional_inductor,
            grad=True,
        ),
        Case(
            "portable_guards",
            "test_aot_compile_portable_guards_unsafe",
            lambda: (pytree_pair, (_xy(3, 4),)),
            slow=True,
        ),
        Case("closure", "test_aot_compile_with_closure_save_and_load", lambda: (make_closure(2), _xy(3, 4))),
        Case(
            "closure_other_int",
            "soundness: make_closure(2) saved, make_closure(3) loaded",
            lambda: (make_closure(2), _xy(3, 4)),
            load_make=lambda: (make_closure(3), _xy(3, 4)),
            slow=True,
        ),
        Case(
            "closure_other_tensor",
            "soundness: a closure tensor of other values at load",
            lambda: (make_closure(torch.ones(4)), _xy(3, 4)),
            load_make=lambda: (make_closure(torch.full((4,), 5.0)), _xy(3, 4)),
        ),
        Case(
            "closure_other_function",
            "soundness: a closure function with another closure at load",
            lambda: (make_apply(make_scale(2.0)), _xy(3, 4)),
            load_make=lambda: (make_apply(make_scale(3.0)), _xy(3, 4)),
            slow=True,
        ),
        Case("super_call", "test_aot_compile_with_super_call", lambda: (TestVLLMModel(), (_rand(3, 4),)), slow=True),
        Case("global_tensor", "test_aot_compile_with_global_tensor", lambda: (add_eps, _xy(3, 4)), slow=True),
        Case(
            "default_args",
            "test_aot_compile_with_default_args",
            lambda: (double_with_default, (_rand(3, 4),)),
            slow=True,
        ),
        Case("checkpoint", "test_aot_compile_with_checkpoint", lambda: (with_checkpoint, _xy(3, 4)), slow=True),
        Case("external_refs", "test_external_refs_validation", lambda: (make_moo, _xy(3, 4)), slow=True),
        Case(
            "builtins_dict", "test_builtins_dict_survives_serialization", lambda: (return_type, (_rand(4),)), slow=True
        ),
        Case(
            "aot_compile_module",
            "test_aot_compile_module (eval + no_grad)",
            lambda: (_seeded(SimpleLinearModule), (_rand(3, 3),)),
            context=torch.no_grad,
        ),
        Case(
            "dynamic_cond",
            "SingleCondModel (test_aot_cache_predicate_not_pickleable's model) with dynamic=True",
            lambda: (_seeded(SingleCondModel), (_rand(16, 64),)),
            dynamic=True,
            calls=lambda: [(_rand(8, 64, seed=3),), (_rand(64, 64, seed=4),)],
        ),
        Case(
            "dynamic_cond_no_grad",
            "SingleCondModel with dynamic=True, compiled and called under no_grad (inference: no backward graph)",
            lambda: (_seeded(SingleCondModel), (_rand(16, 64),)),
            dynamic=True,
            context=torch.no_grad,
            calls=lambda: [(_rand(8, 64, seed=3),), (_rand(64, 64, seed=4),)],
            slow=True,
        ),
    )
}


def flatten(value: Any) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return [value.detach()]
    if isinstance(value, MooType):
        return ["MooType", *flatten(value.x)]
    if isinstance(value, dict):
        return [item for key, element in value.items() for item in (key, *flatten(element))]
    if isinstance(value, (tuple, list)):
        return [item for element in value for item in flatten(element)]
    return [value]


def same(a: Any, b: Any) -> bool:
    left, right = flatten(a), flatten(b)
    if len(left) != len(right):
        return False
    for u, v in zip(left, right, strict=True):
        if isinstance(u, torch.Tensor) != isinstance(v, torch.Tensor):
            return False
        if isinstance(u, torch.Tensor):
            if u.shape != v.shape or u.dtype != v.dtype or not torch.allclose(u.float(), v.float(), atol=1e-2):
                return False
        elif u != v:
            return False
    return True
