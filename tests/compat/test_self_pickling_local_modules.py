"""Which modules ``self-pickling-local-modules`` saves through their own reduction (``rebuilds_its_own_class``).

The fix's end-to-end proofs run in separate processes: tests/compat/test_roundtrip.py (a tiny transformers Llama,
without the fix and with it) and tests/test_correctness.py (``hub_func_*``: the same shape without transformers, a
hit when nothing changed and a miss when the wrapped function did). Here, in one process, the rule itself: only a
local class that says how to pickle itself, and whose reduction brings back an object of that very class.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from torchkiln.compat.fixes.self_pickling_local_modules import rebuilds_its_own_class

pytestmark = pytest.mark.compat


class ModuleScope(torch.nn.Module):
    def __reduce__(self) -> Any:
        return (ModuleScope, ())


def _local_class(reduce: Any = None) -> type[torch.nn.Module]:
    class Local(torch.nn.Module):
        pass

    if reduce is not None:
        Local.__reduce__ = reduce  # type: ignore[method-assign]
    return Local


_BY_FACTORY = _local_class(lambda self: (_rebuild_by_factory, ()))


def _rebuild_by_factory() -> torch.nn.Module:
    return _BY_FACTORY()


_BY_NAME = _local_class(lambda self: "by_name_instance")
by_name_instance = _BY_NAME()


def test_a_local_class_rebuilt_by_an_importable_factory_qualifies() -> None:
    assert rebuilds_its_own_class(_BY_FACTORY())


def test_the_module_global_itself_qualifies_and_a_copy_of_it_does_not() -> None:
    assert rebuilds_its_own_class(by_name_instance)
    assert not rebuilds_its_own_class(_BY_NAME())  # its reduction names a global that is another object


def test_what_torch_saves_already_or_what_cannot_come_back_does_not_qualify() -> None:
    assert not rebuilds_its_own_class(ModuleScope())  # not local: torch saves it by reference already
    assert not rebuilds_its_own_class(_local_class()())  # never said how to pickle itself
    assert not rebuilds_its_own_class(object())  # not a module

    def local_factory() -> torch.nn.Module:
        return torch.nn.Module()

    assert not rebuilds_its_own_class(_local_class(lambda self: (local_factory, ()))())  # not importable by name
    assert not rebuilds_its_own_class(_local_class(lambda self: (torch.nn.Module, ()))())  # another class
    assert not rebuilds_its_own_class(_local_class(lambda self: (_raise, ()))())  # the factory fails

    def failing_reduce(self: Any) -> Any:
        raise TypeError("cannot pickle")

    assert not rebuilds_its_own_class(_local_class(failing_reduce)())


def _raise() -> None:
    raise RuntimeError("no")
