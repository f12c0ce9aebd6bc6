"""Which objects a fresh process can rebuild from a name: the one rule the fixes that save objects share.

torch's savers pickle modules by import name and classes/functions by ``module.qualname``; an object reached
another way (a local class, a rebound name) cannot be rebuilt in another process. ``module-globals`` saves a
Dynamo-installed global only when this says yes, ``guard-state-singletons`` keeps an enum member by value only
when its class passes it. It lives here, not in either fix, so that each fix imports only compat helpers.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["saveable_by_reference"]


def saveable_by_reference(value: Any) -> bool:
    """True for objects a fresh process can rebuild from a name: modules, and classes/functions at module scope."""
    if isinstance(value, types.ModuleType):
        return value.__name__ in sys.modules
    module_name = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str) or "<locals>" in qualname:
        return False
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return False
    return obj is value
