"""Portable descriptions of guarded values: what "the same value" means in another process.

A guard torch cannot serialize checks an object's identity (a module, a class, a function, a builtin, a closure
cell) or a value held in the compiling frame's globals. Identity does not exist across processes, so each value is
described by something a fresh process can compare: a module, class, function, builtin or code object by import
name (functions and code also by a digest of their bytecode, never their file path or line numbers: a moved
checkout is the same code), a constant by value, a dict or an object's ``__dict__`` by its keys, a sequence by its
length, and anything else by its type. guard_fates.py decides which guards get a re-check; this module only says
what a value looks like. Pure Python: no torch import.
"""

from __future__ import annotations

import builtins
import enum
import importlib
import math
import re
import types
from collections.abc import Mapping
from typing import Any

from torchkiln import digests
from torchkiln.targets import qualname

__all__ = ["ROOT_RE", "describe", "resolve_root", "root_token"]

_MAX_KEYS = 512


# -- portable descriptions --------------------------------------------------------------------------------------
def _code_digest(code: types.CodeType) -> str:
    return digests.code_digest(code)[:16]  # 64 bits tell two versions of one function apart; headers stay small


def _name_token(value: Any) -> str | None:  # noqa: PLR0911 - one early return per kind of object reads clearest
    """A name a fresh process resolves to "the same" object, or None for objects that have none."""
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if isinstance(value, type):
        return f"class {qualname(value)}"
    if isinstance(value, enum.Enum):
        return f"enum {type(value).__module__}.{type(value).__qualname__}.{value.name}"
    if isinstance(value, types.FunctionType):
        return f"function {qualname(value)} {_code_digest(value.__code__)}"
    if isinstance(value, types.CodeType):
        return f"code {getattr(value, 'co_qualname', value.co_name)} {_code_digest(value)}"
    if isinstance(value, types.MethodType):
        inner = _name_token(value.__func__)
        return None if inner is None else f"method {inner} of {_owner_token(value.__self__)}"
    if isinstance(
        value,
        types.BuiltinFunctionType
        | types.MethodDescriptorType
        | types.WrapperDescriptorType
        | types.MethodWrapperType
        | types.ClassMethodDescriptorType
        | types.GetSetDescriptorType
        | types.MemberDescriptorType,
    ):
        owner = getattr(value, "__self__", None)
        owner_token = "" if owner is None or isinstance(owner, types.ModuleType) else f" of {_owner_token(owner)}"
        module = str(getattr(value, "__module__", None) or getattr(type(owner), "__module__", "?"))
        return f"builtin {module}.{getattr(value, '__qualname__', getattr(value, '__name__', '?'))}{owner_token}"
    if isinstance(value, property | staticmethod | classmethod):
        parts = [_name_token(getattr(value, n, None)) for n in ("fget", "__func__")]
        named = [p for p in parts if p]
        return f"{type(value).__name__} {named[0]}" if named else None
    return None


def _owner_token(owner: Any) -> str:
    return _name_token(owner) or f"an instance of {_name_token(type(owner))}"


def _constant(value: Any, depth: int = 0) -> tuple[bool, Any]:
    """(True, JSON form) for a value compared by equality: None, bool, int, float, str, tuples/lists of those,
    sets/frozensets of those (sorted: iteration order is per process, by string hash), torch dtypes and devices
    (by their text); (False, None) otherwise."""
    if value is None or isinstance(value, bool | int | str):
        return True, value
    if isinstance(value, float):
        return True, value if math.isfinite(value) else repr(value)
    if isinstance(value, tuple | list) and depth < 4 and len(value) <= 64:
        items = [_constant(v, depth + 1) for v in value]
        return (all(ok for ok, _ in items), [v for _, v in items])
    # diffusers guards a module-level ``frozenset({"mps", "npu"})`` (which devices lack float64) in every Flux
    # forward: SET_CONTAINS / SET_NOT_CONTAINS / CONSTANT_MATCH on it are re-checked by value.
    if isinstance(value, set | frozenset) and depth < 4 and len(value) <= 64:
        members = [_constant(v, depth + 1) for v in value]
        return (all(ok for ok, _ in members), sorted((v for _, v in members), key=repr))
    module = type(value).__module__
    if module == "torch" and type(value).__name__ in ("dtype", "device", "layout", "memory_format"):
        return True, str(value)
    return False, None


def _keys(mapping: Mapping[Any, Any]) -> list[str] | None:
    if len(mapping) > _MAX_KEYS:
        return None
    return sorted(_key_token(k) for k in mapping)


def _key_token(key: Any) -> str:
    if isinstance(key, str):
        return key
    text = repr(key)
    # A function key's repr carries its address (``<function namedtuple at 0x7f...>``, torch.utils._pytree's
    # SUPPORTED_NODES holds one): never equal in another process. Such a key is compared by its name instead.
    if " at 0x" in text:
        return _name_token(key) or text
    return text


_BY_KEYS = {
    "DICT_KEYS_MATCH",
    "DICT_KEYS",
    "DICT_CONTAINS",
    "DICT_NOT_CONTAINS",
    "DICT_VERSION",
    "NOT_PRESENT_IN_GENERIC_DICT",
    "HASATTR",
}


#: Guards on one key of a dict or one attribute of an object; Dynamo passes it as the builder's keyword argument.
_BY_MEMBER = {"DICT_CONTAINS", "DICT_NOT_CONTAINS", "NOT_PRESENT_IN_GENERIC_DICT"}


def describe(guard_type: str, value: Any, member: Any = None) -> dict[str, Any] | None:  # noqa: PLR0911 - one return per kind of check
    """The portable description a re-check compares, chosen by what the guard checked; None: none exists."""
    if guard_type == "SEQUENCE_LENGTH":
        try:
            return {"len": len(value)}
        except TypeError:
            return None
    if guard_type == "TYPE_MATCH":
        token = _name_token(type(value))
        return None if token is None else {"type": token}
    if member is not None and guard_type in _BY_MEMBER and isinstance(member, str | int):
        # The guard checked one key (``"X" in os.environ``) or one attribute: compare exactly that, not every key
        # (a process with other environment variables must still hit).
        mapping = value if isinstance(value, Mapping) else getattr(value, "__dict__", None)
        if not isinstance(mapping, Mapping):
            return None
        return {"member": member, "present": member in mapping}
    if guard_type in _BY_KEYS:
        mapping = value if isinstance(value, Mapping) else getattr(value, "__dict__", None)
        keys = _keys(mapping) if isinstance(mapping, Mapping) else None
        if keys is None:
            return None
        return {"keys": keys, "type": _name_token(type(value))}
    ok, constant = _constant(value)
    if ok:
        return {"eq": constant, "type": _name_token(type(value))}
    token = _name_token(value)
    if token is not None:
        return {"is": token}
    # An object with no importable name (a registry instance, a config object held in a global): the same name
    # must hold an object of the same type. What the graph read from it is guarded through its own sources.
    type_token = _name_token(type(value))
    return None if type_token is None else {"type": type_token, "nameless": True}


# -- the globals guard expressions start from --------------------------------------------------------------------
ROOT_RE = re.compile(r"^G\[(['\"])(.+?)\1\]")


def root_token(value: Any) -> str | None:
    """How a fresh process rebuilds a global that Dynamo installed for its guards (``__import_<mod>``, a builtins
    dict): a module by import name, or this interpreter's builtins. None: it cannot be rebuilt."""
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if value is builtins.__dict__:
        return "builtins"
    return None


def resolve_root(token: str) -> Any:
    if token == "builtins":
        return builtins.__dict__
    kind, _, name = token.partition(" ")
    if kind == "module":
        return importlib.import_module(name)
    raise LookupError(f"cannot rebuild a global from {token!r}")
