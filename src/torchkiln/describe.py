"""Live objects -> deterministic JSON: the descriptions the cache key hashes and ``torchkiln explain`` shows.

cache_key.py owns which parts a key has; this module owns how a target, its module tree and its example
inputs are described. Every description is plain JSON (str/int/float/bool/None, lists, str-keyed dicts),
identical across processes: no ``id()``, no ``repr()`` with addresses, sets sorted, hash randomization
irrelevant. Weights are never read, only their names, shapes, dtypes and devices.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import inspect
import json
import math
import sys
import types
from collections.abc import Iterator, Mapping
from typing import Any

from torchkiln import digests
from torchkiln.targets import qualname, unwrap

__all__ = [
    "canonical_json",
    "describe_distributed",
    "describe_inputs",
    "describe_structure",
    "describe_target",
    "value_json",
]

_CONFIG_VOLATILE = frozenset({"_name_or_path", "name_or_path", "transformers_version", "_commit_hash"})
_ATTR_SKIPPED = frozenset({"training", "name_or_path", "_name_or_path"})  # training: recorded on its own
_MAX_DEPTH = 8


def canonical_json(value: Any) -> str:
    """The one serialization that is hashed: sorted keys, no whitespace, ASCII, no NaN tokens."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _tensor(t: Any, *, dynamic: bool) -> dict[str, Any]:
    import torch

    def dyn(
        n: int,
    ) -> int | str:  # Dynamo specializes 0 and 1 even when dynamic; every other size is symbolic
        return n if not dynamic or n in (0, 1) else "dyn"

    spec: dict[str, Any] = {
        "shape": [dyn(int(n)) for n in t.shape],
        "dtype": str(t.dtype),
        "device": str(t.device),
        "requires_grad": bool(t.requires_grad),
        "layout": str(t.layout),
    }
    if t.layout == torch.strided:
        spec["stride"] = [dyn(int(n)) for n in t.stride()]
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        spec["type"] = qualname(type(t))  # subclasses (DTensor, ...) trace differently
    return spec


def value_json(v: Any, depth: int = 0, *, dynamic: bool = False) -> Any:  # noqa: PLR0911, PLR0912
    """JSON for a constant: scalars by value, tensors by spec, callables and classes by qualname.

    One flat dispatch over JSON kinds (hence the noqa) reads better than a table of predicates.
    """
    import torch

    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(v, torch.Tensor):
        return {"tensor": _tensor(v, dynamic=dynamic)}
    if isinstance(v, torch.dtype | torch.device | torch.layout | torch.memory_format):
        return {type(v).__name__: str(v)}
    if isinstance(v, enum.Enum):
        return {"enum": f"{qualname(type(v))}.{v.name}"}
    if depth >= _MAX_DEPTH:
        return {"object": qualname(type(v)), "truncated": True}
    if isinstance(v, torch.nn.Module):
        return {"module": qualname(type(v))}
    if isinstance(v, Mapping):
        return {str(k): value_json(x, depth + 1, dynamic=dynamic) for k, x in v.items()}
    if isinstance(v, tuple) and hasattr(v, "_fields"):
        return {"type": qualname(type(v)), "items": [value_json(x, depth + 1, dynamic=dynamic) for x in v]}
    if isinstance(v, tuple | torch.Size):
        return [value_json(x, depth + 1, dynamic=dynamic) for x in v]
    if isinstance(v, list):
        return {"list": [value_json(x, depth + 1, dynamic=dynamic) for x in v]}
    if isinstance(v, set | frozenset):  # iteration order follows hash randomization: sort the JSON
        return {"set": sorted((value_json(x, depth + 1) for x in v), key=canonical_json)}
    if isinstance(v, type):
        return {"class": qualname(v)}
    if isinstance(v, functools.partial):
        return {"partial": value_json(v.func, depth + 1), "args": value_json(v.args, depth + 1)}
    if callable(getattr(v, "to_dict", None)) and hasattr(v, "model_type"):  # a transformers config
        values = {k: x for k, x in v.to_dict().items() if k not in _CONFIG_VOLATILE}
        return {
            "config": qualname(type(v)),
            # decides eager / sdpa / flash attention code paths, and to_dict() leaves it out
            "attn_implementation": value_json(getattr(v, "_attn_implementation", None), depth + 1),
            "values": value_json(values, depth + 1),
        }
    if callable(v) and hasattr(v, "__qualname__"):
        return {"callable": qualname(v)}
    return {"object": qualname(type(v))}


def _source_digest(module_name: str) -> str:
    """sha256 of a module's source file ("no source file" for a notebook cell, exec() or a builtin module)."""
    path = getattr(sys.modules.get(module_name), "__file__", None)
    digest = digests.file_digest(path) if path else None
    return digest or "no source file"


def _is_third_party(module_name: str) -> bool:

    top = module_name.partition(".")[0]
    # torch's own files are covered by torch's version and git commit in the fingerprint; the stdlib's by
    # the Python version.
    return top != "torch" and top not in sys.stdlib_module_names and top != "builtins"


def _modules_of(target: Any) -> dict[str, Any]:
    """The nn.Modules a target runs: itself; or a method's owner and the modules a function reads by name.

    Dynamo would guard those with ID_MATCH, which cannot be serialized (issue 3, item 10), so they are
    described structurally instead.
    """

    import torch

    if isinstance(target, torch.nn.Module):
        return {"": target}
    found: dict[str, Any] = {}
    if inspect.ismethod(target) and isinstance(target.__self__, torch.nn.Module):
        found["self"] = target.__self__
    fn = unwrap(target)
    code, cells = fn.__code__, fn.__closure__ or ()
    for name in code.co_names:
        value = fn.__globals__.get(name)
        if isinstance(value, torch.nn.Module):
            found[f"global {name}"] = value
    for name, cell in zip(code.co_freevars, cells, strict=False):
        with contextlib.suppress(ValueError):  # an empty cell (variable assigned later) has no contents
            if isinstance(cell.cell_contents, torch.nn.Module):
                found[f"closure {name}"] = cell.cell_contents
    return found


def describe_target(target: Any) -> dict[str, Any]:
    """Qualname, and the content hash of every source file that defines the target or a class in its tree."""
    import torch

    names: set[str] = set()
    classes: set[type] = set()
    if isinstance(target, torch.nn.Module):
        desc: dict[str, Any] = {"kind": "module", "qualname": qualname(type(target))}
    else:
        fn = unwrap(target)
        desc = {"kind": "function", "qualname": qualname(fn)}
        names.add(fn.__module__)
    for module in _modules_of(target).values():
        classes |= {cls for m in module.modules() for cls in type(m).__mro__}
    names |= {cls.__module__ for cls in classes}
    desc["sources"] = {n: _source_digest(n) for n in sorted(names) if _is_third_party(n)}
    fileless = {n for n, d in desc["sources"].items() if d == "no source file"}
    # Classes and functions from a notebook cell or exec() have no file to hash: hash their code instead,
    # so that editing a cell and running it again is a miss, not a stale hit.
    code = {qualname(cls): _code_digest_all(cls) for cls in sorted(classes, key=qualname) if cls.__module__ in fileless}
    if desc["kind"] == "function" and (fn.__module__ in fileless or "<locals>" in fn.__qualname__):
        # A nested function: one qualname can name several functions (``if a: def f ... else: def f``), and no
        # file hash tells which one ran; its code digest does (targets.py says why nested functions are sound).
        code[qualname(fn)] = digests.code_digest(fn.__code__)
    if code:
        desc["code"] = code
    return desc


def _code_digest_all(cls: type) -> str:
    hasher = hashlib.sha256()
    for name, attr in sorted(vars(cls).items()):
        func = getattr(attr, "__func__", attr)  # staticmethod / classmethod
        if hasattr(func, "__code__"):
            hasher.update(f"{name}:{digests.code_digest(func.__code__)};".encode())
    return hasher.hexdigest()


def _describe_module(module: Any) -> dict[str, Any]:
    first_path: dict[int, str] = {}  # tied parameters: the later names point at the first one
    for pname, p in module.named_parameters(remove_duplicate=False):
        first_path.setdefault(id(p), pname)
    seen_configs: dict[int, str] = {}
    modules: dict[str, Any] = {}
    for path, sub in module.named_modules(remove_duplicate=False):
        prefix = f"{path}." if path else ""
        attrs: dict[str, Any] = {}
        for k, v in sorted(vars(sub).items()):
            if k in _ATTR_SKIPPED or "hook" in k or k in ("_parameters", "_buffers", "_modules"):
                continue
            if k.startswith("_") and not (v is None or isinstance(v, bool | int | float | str)):
                continue  # private containers are torch/library bookkeeping; private scalars can steer code
            if hasattr(v, "model_type"):  # one config object is shared by many submodules: describe it once
                if id(v) in seen_configs:
                    attrs[k] = {"same_config_as": seen_configs[id(v)]}
                    continue
                seen_configs[id(v)] = prefix + k
            attrs[k] = value_json(v)
        params = {
            n: None
            if p is None
            else {"tied_to": first_path[id(p)]}
            if first_path.get(id(p), prefix + n) != prefix + n
            else [list(p.shape), str(p.dtype), str(p.device), bool(p.requires_grad)]
            for n, p in sub._parameters.items()  # noqa: SLF001 - nn.Module's own registry, None placeholders included
        }
        not_persistent: set[str] = getattr(sub, "_non_persistent_buffers_set", set())
        buffers = {
            n: None if b is None else [list(b.shape), str(b.dtype), str(b.device), n not in not_persistent]
            for n, b in sub._buffers.items()  # noqa: SLF001 - nn.Module's own registry, None placeholders included
        }
        hooks = {  # hooks run inside the traced call: another hook is another graph
            h: [qualname(f) for f in getattr(sub, f"_{h}").values()]
            for h in ("forward_pre_hooks", "forward_hooks", "backward_pre_hooks", "backward_hooks")
            if getattr(sub, f"_{h}", None)
        }
        entry = {"class": qualname(type(sub)), "training": sub.training, "attrs": attrs}
        entry.update({k: v for k, v in (("params", params), ("buffers", buffers), ("hooks", hooks)) if v})
        modules[path] = entry
    return modules


def describe_structure(target: Any) -> dict[str, Any] | None:
    """Per submodule: class, training flag, constant attributes, hooks, parameters and buffers (no values).

    A module target gives ``{"modules": {path: entry}}``; a function gives one such tree per module it
    reaches (``"self"``, ``"global NAME"``, ``"closure NAME"``), or ``None`` when it reaches none.
    """
    found = _modules_of(target)
    if set(found) == {""}:
        return {"modules": _describe_module(found[""])}
    return {name: {"modules": _describe_module(m)} for name, m in sorted(found.items())} or None


def describe_inputs(args: tuple[Any, ...], kwargs: Mapping[str, Any], *, dynamic: bool) -> dict[str, Any]:
    """Tensors by spec (sizes other than 0/1 are "dyn" when dynamic), scalars by value, others by type."""
    return {
        "args": [value_json(a, dynamic=dynamic) for a in args],
        "kwargs": {str(k): value_json(v, dynamic=dynamic) for k, v in sorted(kwargs.items())},
    }


# -- torch.distributed ---------------------------------------------------------------------------------------------
# Dynamo bakes dist.get_rank() / get_world_size() into the graph as constants without a guard (torch's
# handle_constant_processgroup_functions), and a DTensor's placements or a rank's shard offset change the code
# without changing a shape. So a target that reaches torch.distributed is keyed per rank; a replica that does not
# (data parallel) shares one artifact across ranks, and builder.py refuses to publish a replica-keyed build whose
# trace touched torch.distributed after all.
_DIST_PREFIX = "torch.distributed"
_MAX_CODE_DEPTH = 2


def _is_distributed(v: Any) -> bool:
    if isinstance(v, types.ModuleType):
        return v.__name__.startswith(_DIST_PREFIX)
    owner = v if isinstance(v, type) else (v if callable(v) and hasattr(v, "__qualname__") else type(v))
    return str(getattr(owner, "__module__", "") or "").startswith(_DIST_PREFIX)


def _distributed_object(v: Any) -> Any:
    """A process group by name and ranks, a device mesh by shape, names and ranks, a DTensor by its placements."""
    import torch
    import torch.distributed as dist

    if isinstance(v, dist.ProcessGroup):
        return {"group": v.group_name, "ranks": dist.get_process_group_ranks(v)}
    mesh, placements = getattr(v, "device_mesh", None), getattr(v, "placements", None)
    if mesh is not None and placements is not None:  # a DTensor (parameter, buffer or attribute)
        local = v.to_local()
        return {"dtensor": [str(p) for p in placements], "mesh": _distributed_object(mesh), "local": list(local.shape)}
    ranks, names = getattr(v, "mesh", None), getattr(v, "mesh_dim_names", None)
    if isinstance(ranks, torch.Tensor):  # a DeviceMesh
        return {"mesh": list(ranks.shape), "dims": list(names or ()), "ranks": ranks.flatten().tolist()}
    if callable(v) and hasattr(v, "__qualname__"):  # a hook parallelize_module installed, a collective
        return {"callable": qualname(v)}
    return {"object": qualname(type(v))}


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _code_reach(fn: Any, where: str, found: dict[str, Any], depth: int = 0) -> None:
    """torch.distributed names the code of ``fn`` reads through its globals (``dist.get_rank``, ``funcol``,
    ``torch.distributed.*``), following module-level functions of the user's code ``_MAX_CODE_DEPTH`` deep."""
    fn = getattr(fn, "__func__", fn)
    code, fn_globals = getattr(fn, "__code__", None), getattr(fn, "__globals__", None)
    if not isinstance(code, types.CodeType) or not isinstance(fn_globals, dict):
        return
    for sub in _code_objects(code):
        for name in sub.co_names:
            value = fn_globals.get(name)
            if value is None:
                continue
            if _is_distributed(value) or (value is sys.modules.get("torch") and "distributed" in sub.co_names):
                found.setdefault(f"{where} reads {name}", qualname(value) if callable(value) else name)
            elif depth < _MAX_CODE_DEPTH and inspect.isfunction(value) and _is_third_party(value.__module__):
                _code_reach(value, f"{where} -> {value.__qualname__}", found, depth + 1)


def _module_reach(root: str, module: Any, found: dict[str, Any]) -> None:
    classes: set[type] = set()
    for path, sub in module.named_modules(remove_duplicate=False):
        prefix = f"{root}{path}" if path else root.rstrip(".")
        tensors = {**sub._parameters, **sub._buffers}  # noqa: SLF001 - nn.Module's own registries, None placeholders included
        for name, value in sorted(vars(sub).items()):
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            values = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else [value]
            for item in values:
                if _is_distributed(item):
                    found[f"{prefix}.{name}"] = _distributed_object(item)
        for name, tensor in sorted(tensors.items()):
            if tensor is not None and _is_distributed(tensor):
                found[f"{prefix}.{name}"] = _distributed_object(tensor)
        classes.add(type(sub))
    for cls in sorted(classes, key=qualname):
        if _is_third_party(cls.__module__):
            _code_reach(getattr(cls, "forward", None), qualname(cls) + ".forward", found)


def describe_distributed(target: Any) -> dict[str, Any] | None:
    """``None`` unless torch.distributed is initialized; else the backend and world size, and, when the target
    reaches torch.distributed (what it reaches is listed), this process's rank."""
    import torch

    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    desc: dict[str, Any] = {"backend": str(dist.get_backend()), "world_size": dist.get_world_size()}
    found: dict[str, Any] = {}
    for root, module in _modules_of(target).items():
        _module_reach(f"{root}." if root else "module.", module, found)
    if not isinstance(target, torch.nn.Module):
        _code_reach(unwrap(target), qualname(unwrap(target)), found)
    if found:
        desc["rank"] = dist.get_rank()
        desc["reaches"] = found
    return desc
