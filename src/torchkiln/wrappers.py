"""What ``torchkiln.compile`` returns: ``CompiledModule`` (an ``nn.Module``, like torch's ``OptimizedModule``) for a
module, ``CompiledFunction`` (a plain callable) for a function or a bound method.

``CompiledModule`` registers the model as its submodule ``_orig_mod``, exactly where ``torch.compile`` puts it: the
parameters, buffers and ``state_dict()`` keys are the model's under ``_orig_mod.`` (what a torch.compile user saves
and loads); attribute reads and writes reach the model; ``.eval()``, ``.train()``, ``.to()``, ``.half()`` act on it.
A call after any of those is served only by a specialization whose guards accept the module as it now is (train
mode, dtypes and devices are guarded and keyed): another one is loaded or compiled. torchkiln's own state lives in
``_torchkiln`` (the ``Specializer``); its read-only views are ``key``, ``hit``, ``timings``, ``artifact_bytes``,
``header`` (of the specialization that served the last call) and ``specializations`` (all of them). Those names
shadow a model attribute of the same name: read that one through ``compiled._orig_mod``.

Copies and pickles hold the model and the compile arguments, not the compiled code: ``copy.deepcopy`` (an EMA copy)
and ``pickle.loads`` give a lazy wrapper that loads its specializations from the cache on its first call.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import sys
import types
from collections.abc import Callable
from typing import Any

import torch

from torchkiln.errors import TorchkilnError
from torchkiln.header import ArtifactHeader
from torchkiln.specialization import Specialization
from torchkiln.specializer import Specializer

__all__ = ["CompiledFunction", "CompiledModule"]


class _Views:
    """The read-only views of the specialization that served the last call (before any call: ``""``, False, ...)."""

    _torchkiln: Specializer

    @property
    def key(self) -> str:
        last = self._torchkiln.last
        return last.key if last is not None else ""

    @property
    def hit(self) -> bool:
        last = self._torchkiln.last
        return bool(last is not None and last.info is not None and last.info.hit)

    @property
    def timings(self) -> dict[str, float]:
        last = self._torchkiln.last
        return dict(last.info.timings) if last is not None and last.info is not None else {}

    @property
    def artifact_bytes(self) -> int:
        last = self._torchkiln.last
        return last.artifact_bytes if last is not None else 0

    @property
    def header(self) -> ArtifactHeader | None:
        last = self._torchkiln.last
        return last.header if last is not None else None

    @property
    def specializations(self) -> tuple[Specialization, ...]:
        """Every specialization this object has loaded or compiled, in that order."""
        return self._torchkiln.specializations

    def _summary(self) -> str:
        recipe, count = self._torchkiln.recipe, len(self._torchkiln.specializations)
        state = f"{count} specialization{'s' if count != 1 else ''}"
        if count:
            state += f", last {self.key} ({'hit' if self.hit else 'compiled'})"
        else:
            state += " (compiles or loads on the first call)"
        return f"{state}, dynamic={recipe.dynamic}, mode={recipe.mode or 'default'}"


class CompiledModule(_Views, torch.nn.Module):
    """An ``nn.Module`` target compiled by torchkiln: call it like the model; it behaves like torch's
    ``OptimizedModule`` (the model is ``_orig_mod``)."""

    _OWN = frozenset({"_orig_mod", "_torchkiln", "_super_module_initialized", "__dict__"})

    def __init__(self, module: torch.nn.Module, specializer: Specializer) -> None:
        # As in OptimizedModule: attribute reads during nn.Module.__init__ go through __getattr__ to _orig_mod.
        object.__setattr__(self, "_orig_mod", module)
        self._super_module_initialized = False
        super().__init__()
        self._super_module_initialized = True
        self._orig_mod = module  # registered as the submodule (parameters, buffers, state_dict keys)
        self._torchkiln = specializer

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # inside another compile (a parent module): traced as the model itself
            return self._orig_mod(*args, **kwargs)
        return self._torchkiln.call(args, kwargs)

    # -- the model's attributes ---------------------------------------------------------------------------------
    @property
    def training(self) -> bool:
        return bool(self._orig_mod.training)

    @training.setter
    def training(self, value: bool) -> None:
        # nn.Module.__init__ sets the default before _orig_mod is registered: the model's own flag stays.
        if self.__dict__.get("_super_module_initialized"):
            self._orig_mod.training = value

    def __getattr__(self, name: str) -> Any:
        if name == "_orig_mod":
            return self._modules["_orig_mod"]
        return getattr(self._orig_mod, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(type(self), name) or name in CompiledModule._OWN:
            super().__setattr__(name, value)
        else:
            setattr(self._orig_mod, name, value)

    def __delattr__(self, name: str) -> None:
        if hasattr(type(self), name) or name in CompiledModule._OWN:
            super().__delattr__(name)
        else:
            delattr(self._orig_mod, name)

    def __dir__(self) -> list[str]:
        own: list[str] = list(dir(self._orig_mod))
        return own + [name for name in super().__dir__() if name not in own]  # type: ignore[no-untyped-call]

    def __len__(self) -> int:
        return len(self._orig_mod)  # type: ignore[arg-type]

    def __bool__(self) -> bool:  # not len(): a model that is not a container is true, as an nn.Module is
        return bool(self._orig_mod)

    def extra_repr(self) -> str:
        return "torchkiln: " + self._summary()

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self._torchkiln.rebuild, (self._orig_mod, self._torchkiln.recipe)


class CompiledFunction(_Views):
    """A function (or a bound method) compiled by torchkiln: call it like the function. Defined in a class body
    (``@torch.compile`` on a method under ``torchkiln.install()``), it binds per instance like a method."""

    __wrapped__: Any

    def __init__(self, function: Any, specializer: Specializer) -> None:
        functools.update_wrapper(self, function)
        self._torchkiln = specializer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # inside another compile: traced as the function itself
            return self.__wrapped__(*args, **kwargs)
        return self._torchkiln.call(args, kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None or inspect.ismethod(self.__wrapped__):
            return self
        try:
            state = vars(instance)
        except TypeError:  # no __dict__ (__slots__): the instance is the first argument of the function
            return types.MethodType(self, instance)
        slot = f"_torchkiln_{self.__wrapped__.__name__}"
        bound = state.get(slot)
        if not (isinstance(bound, CompiledFunction) and getattr(bound.__wrapped__, "__self__", None) is instance):
            bound = self._torchkiln.rebuild(types.MethodType(self.__wrapped__, instance), self._torchkiln.recipe)
            state[slot] = bound
        return bound

    def __repr__(self) -> str:
        return f"<torchkiln.CompiledFunction {getattr(self, '__qualname__', '?')}: {self._summary()}>"

    def __reduce__(self) -> str | tuple[Callable[..., Any], tuple[Any, ...]]:
        # By name where the name resolves to this object (a decorated module-level function), as for a function;
        # as a lazy compile of the function where that one has an importable name. Otherwise (a reassigned
        # ``model.forward``, a per-instance method) a stand-in that says so when called: torch's guard pickler
        # saves the callables in a module's ``__dict__`` by value, and compiled code never travels in a pickle.
        qualname = str(getattr(self, "__qualname__", "?"))
        if _resolve(getattr(self, "__module__", None), qualname) is self:
            return qualname
        wrapped, recipe = self.__wrapped__, self._torchkiln.recipe
        named = inspect.isfunction(wrapped) and _resolve(wrapped.__module__, wrapped.__qualname__) is wrapped
        if named and (recipe.cache is None or isinstance(recipe.cache, str | os.PathLike)):  # not a Store object
            return self._torchkiln.rebuild, (wrapped, recipe)
        return _PickledFunction, (qualname,)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        if not inspect.ismethod(self.__wrapped__):
            return self  # a function is not copied (as copy.deepcopy does for functions)
        # A copied model gets a wrapper bound to the copy (lazy: it loads from the cache on its first call).
        return self._torchkiln.rebuild(copy.deepcopy(self.__wrapped__, memo), self._torchkiln.recipe)


class _PickledFunction:
    """What an unpickled ``CompiledFunction`` that has no importable name becomes."""

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TorchkilnError(
            f"{self.qualname} was a torchkiln CompiledFunction that was pickled; its compiled code is not pickled",
            where=self.qualname,
            fix="compile it again in this process (torchkiln.compile or torch.compile); the cache makes that a load",
        )


def _resolve(module: str | None, qualname: str) -> Any:
    obj: Any = sys.modules.get(module or "")
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj
