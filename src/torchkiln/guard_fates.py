"""Every guard Dynamo installs gets a fate: kept, re-checked or keyed (DESIGN §10, docs/CACHE.md).

torch can serialize most guards (``kept``: evaluated by torch's guard manager on every call). It cannot serialize
guards on object *identity* (``ID_MATCH`` and the types derived from it: a module, a class, a function, a builtin,
a closure cell) nor, once the artifact moves to another process, anything rooted in the compiling frame's
globals (a module-level ``SCALE = float(os.environ[...])`` read in ``forward``). Those are dropped from the
artifact's own guards, and this module gives each one the **re-checked** fate: at compile it records a portable
description of the guarded value (``check``: a module/class/function by import name and code digest, a constant
by value, a dict by its keys, a sequence by its length, anything else by its type), and in the loading process it
evaluates the guard's own source expression (``G['__import_knobmod'].SCALE``, ``module._modules['a'].__class__``)
and compares. A mismatch is a miss (another variant of the key, or a compile), never a run.

After the first full comparison in a process, a per-call check runs: one generated function that re-evaluates every
expression and compares it by identity with the object found then (a few microseconds); an identity change falls
back to the full comparison, so a value that was re-assigned but is equal still passes and one that differs fails.

A dropped guard whose value has no portable description, or whose expression cannot be evaluated back at compile
(``_self_check``), has no fate: ``unfated``. torchkiln refuses to publish an artifact with one (strict: an error).

This module is pure Python: the compiler hands it torch's guard-filter entries, the loaded function's globals and
the frame locals. It never imports torch's internals.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import dataclasses
import math
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torchkiln.guard_values import ROOT_RE, describe, resolve_root, root_token

__all__ = [
    "FATES",
    "KEYED_STATE",
    "GuardRecord",
    "Rechecker",
    "describe",
    "fate_counts",
    "guard_roots",
]

#: The fates a guard can have, as recorded in the header's ``guards`` list.
FATES = ("kept", "re-checked", "keyed", "unfated")

#: Global torch state guards that torch keeps *and* the key carries (cache_key's ``options.context``), so that an
#: artifact built under other state is another key, not a guard failure at call time.
KEYED_STATE = frozenset({"GRAD_MODE", "DEFAULT_DEVICE", "DETERMINISTIC_ALGORITHMS", "GLOBAL_STATE"})

# Names Dynamo's guard sources may call (torch/_dynamo/guards.py's closure vars); plain Python equivalents, so a
# guard expression evaluates the same in any process without importing Dynamo.
#: Kept guards whose expected value torch captures when it builds the guard (at load, from its pickled guard state):
#: these are re-checked against the value recorded at compile (see ``FatePlanner.kept``).
VALUE_CAPTURING = frozenset({"CONSTANT_MATCH", "EQUALS_MATCH", "SEQUENCE_LENGTH", "DICT_KEYS_MATCH", "DICT_KEYS"})

_PER_CALL_TYPES = (tuple, list, dict, int, float, bool, str, type(None))

_HELPERS: dict[str, Any] = {
    "___odict_getitem": collections.OrderedDict.__getitem__,
    "___dict_contains": lambda a, b: dict.__contains__(b, a),
    "___namedtuple_fields": lambda x: x._fields,
    "___tuple_iterator_getitem": lambda it, index: it.__reduce__()[1][0][index],
    "inf": math.inf,
}


@dataclasses.dataclass(frozen=True)
class GuardRecord:
    """One guard and its fate. ``check`` is the portable description a re-check compares (None when kept)."""

    name: str
    guard_type: str
    fate: str
    scope: str  # "global" (rooted in the frame's globals) or "local" (in its arguments)
    check: Mapping[str, Any] | None = None
    why: str = ""
    #: kept by torch too (which catches later changes): the re-check runs once per call frame's objects, not per call
    once: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "guard_type": self.guard_type, "fate": self.fate}
        if self.fate != "kept":
            out["scope"] = self.scope
            out["why"] = self.why
        if self.check is not None:
            out["check"] = dict(self.check)
        if self.once:
            out["once"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuardRecord:
        check = data.get("check")
        return cls(
            name=str(data["name"]),
            guard_type=str(data.get("guard_type", "")),
            fate=str(data.get("fate", "unfated")),
            scope=str(data.get("scope", "local")),
            check=dict(check) if isinstance(check, Mapping) else None,
            why=str(data.get("why", "")),
            once=bool(data.get("once", False)),
        )


def fate_counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """``{"kept": n, "re-checked": n, ...}`` for a header's ``guards`` list (what ``inspect`` summarises)."""
    counts = dict.fromkeys(FATES, 0)
    for record in records:
        fate = str(record.get("fate", "unfated"))
        counts[fate] = counts.get(fate, 0) + 1
    return counts


def guard_roots(records: Sequence[GuardRecord]) -> set[str]:
    """The names of the globals that the re-checked guards' expressions start from (``G['<name>']...``)."""
    return {m.group(2) for r in records if r.fate == "re-checked" and (m := ROOT_RE.match(r.name))}


# -- evaluating guard expressions --------------------------------------------------------------------------------
def _namespace(f_globals: Mapping[str, Any], f_locals: Mapping[str, Any] | None) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__builtins__": builtins, **_HELPERS, "G": f_globals}
    # Dynamo spells a dict key that is a dtype as ``torch.float64`` in a guard's source (``X[torch.float64]``, as
    # diffusers' ``_DTYPE_UNSUPPORTED_DEVICES`` in every Flux forward): its own guards evaluate with ``torch`` in
    # scope, so ours do too. torch is always imported by then (a re-check runs beside a compiled artifact).
    if "torch" in sys.modules:
        namespace["torch"] = sys.modules["torch"]
    if f_locals is not None:
        namespace["L"] = f_locals
    return namespace


def _evaluate(name: str, namespace: dict[str, Any], f_locals: Mapping[str, Any] | None) -> Any:
    return eval(name, namespace, dict(f_locals or {}))


@dataclasses.dataclass
class Rechecker:
    """The re-checks of one specialization in this process: a full comparison, then a cheap identity check."""

    records: tuple[GuardRecord, ...]
    #: how to rebuild each global the expressions start from (``root_token``), recorded at compile
    roots: Mapping[str, str] = dataclasses.field(default_factory=dict)
    _bound: list[Any] | None = None
    _fast: Callable[[Mapping[str, Any], Mapping[str, Any], list[Any]], bool] | None = None
    _globals: tuple[int, dict[str, Any]] | None = None
    _once_seen: set[tuple[int, ...]] = dataclasses.field(default_factory=set)

    def __post_init__(self) -> None:
        self._per_call = tuple(r for r in self.records if not r.once)
        self._once = tuple(r for r in self.records if r.once)

    @classmethod
    def of(cls, guards: Sequence[Mapping[str, Any]], roots: Mapping[str, str] | None = None) -> Rechecker:
        records = tuple(GuardRecord.from_dict(g) for g in guards if g.get("fate") == "re-checked")
        return cls(records, dict(roots or {}))

    def globals_for(self, f_globals: Mapping[str, Any]) -> Mapping[str, Any]:
        """``f_globals`` plus the recorded roots, rebuilt in this process (once per function). The loaded function's
        globals hold only what its bytecode uses; the guards' ``__import_*`` and builtins-dict names are rebuilt
        from their import names. A root that cannot be rebuilt is left out: its guards then fail, a miss."""
        if self._globals is not None and self._globals[0] == id(f_globals):
            return self._globals[1]
        merged = dict(f_globals)
        for name, token in self.roots.items():
            if name not in merged:
                with contextlib.suppress(Exception):  # an import that fails here: those guards cannot hold
                    merged[name] = resolve_root(token)
        self._globals = (id(f_globals), merged)
        return merged

    @property
    def has_local(self) -> bool:
        return any(r.scope == "local" for r in self.records)

    def mismatches(
        self, f_globals: Mapping[str, Any], f_locals: Mapping[str, Any] | None, *, scope: str | None = None
    ) -> list[str]:
        """Every re-checked guard (of ``scope``, or all) whose value here differs from the recorded one."""
        return [reason for _, reason in self.mismatch_pairs(f_globals, f_locals, scope=scope)]

    def mismatch_pairs(
        self,
        f_globals: Mapping[str, Any],
        f_locals: Mapping[str, Any] | None,
        *,
        scope: str | None = None,
        records: Sequence[GuardRecord] | None = None,
    ) -> list[tuple[GuardRecord, str]]:
        namespace = _namespace(self.globals_for(f_globals), f_locals)
        reasons: list[tuple[GuardRecord, str]] = []
        for record in self.records if records is None else records:
            if scope is not None and record.scope != scope:
                continue
            try:
                value = _evaluate(record.name, namespace, f_locals)
            except Exception as exc:  # noqa: BLE001 - the name does not resolve here: the guard cannot hold
                reasons.append((record, f"{record.name}: cannot be evaluated here ({type(exc).__name__}: {exc})"))
                continue
            found = describe(record.guard_type, value, (record.check or {}).get("member"))
            if found != record.check:
                reasons.append((record, f"{record.name}: {_short(record.check)} at compile, {_short(found)} here"))
        return reasons

    def check_call(self, f_globals: Mapping[str, Any], f_locals: Mapping[str, Any]) -> bool:
        """Whether every re-checked guard holds for this call (identity fast path, full comparison on change)."""
        if not self.records:
            return True
        f_globals = self.globals_for(f_globals)
        if self._once:
            # The frame's long-lived objects (the module; not the per-call argument containers and tensors).
            frame = tuple(
                id(v)
                for v in f_locals.values()
                if not isinstance(v, _PER_CALL_TYPES) and not type(v).__module__.startswith("torch")
            )
            if frame not in self._once_seen:
                if self.mismatch_pairs(f_globals, f_locals, records=self._once):
                    return False
                if len(self._once_seen) < 64:
                    self._once_seen.add(frame)
        if not self._per_call:
            return True
        if self._fast is not None and self._bound is not None:
            try:
                if self._fast(f_globals, f_locals, self._bound):
                    return True
            except Exception:  # noqa: BLE001 - any failure to compare is "no match"
                pass
        if self.mismatch_pairs(f_globals, f_locals, records=self._per_call):
            return False
        self._bind(f_globals, f_locals)
        return True

    def _bind(self, f_globals: Mapping[str, Any], f_locals: Mapping[str, Any]) -> None:
        namespace = _namespace(f_globals, f_locals)
        values = [_evaluate(r.name, namespace, f_locals) for r in self._per_call]
        self._bound = [_fast_operand(r, v) for r, v in zip(self._per_call, values, strict=True)]
        if self._fast is None:
            self._fast = _compile_fast_check(self._per_call, values, f_locals)


def _keys_of(value: Any) -> Any:
    mapping = value if isinstance(value, Mapping) else getattr(value, "__dict__", {})
    return set(mapping)


def _fast_operand(record: GuardRecord, value: Any) -> Any:
    """What the per-call check compares the expression's value with (see ``_fast_term``)."""
    check = record.check or {}
    if "member" in check:
        return (check["member"], check["present"])
    if "keys" in check:
        return _keys_of(value)
    if "len" in check:
        return len(value)
    if "type" in check and "is" not in check and "eq" not in check:
        return type(value)
    return value


def _fast_term(record: GuardRecord, value: Any, index: int) -> str:  # noqa: PLR0911 - one return per kind
    """One cheap comparison per re-check: identity for named objects (equality for bound methods, which are new
    objects at each attribute access), equality for constants, the key set, the length, or the type."""
    check, expr, bound = record.check or {}, f"({record.name})", f"___tk_bound[{index}]"
    if "member" in check:
        return f"(({bound}[0] in ___tk_keys{expr}) == {bound}[1])"
    if "keys" in check:
        return f"___tk_keys{expr} == {bound}"
    if "len" in check:
        return f"len{expr} == {bound}"
    if "eq" in check:
        return f"(type({expr}) is type({bound}) and {expr} == {bound})"
    if "is" in check and not isinstance(value, types.MethodType):
        return f"{expr} is {bound}"
    if "is" in check:
        return f"{expr} == {bound}"
    return f"type{expr} is {bound}"


def _compile_fast_check(
    records: Sequence[GuardRecord], values: Sequence[Any], f_locals: Mapping[str, Any]
) -> Callable[[Mapping[str, Any], Mapping[str, Any], list[Any]], bool]:
    """One generated function that evaluates every re-check's expression and compares it cheaply, the frame's
    locals bound by name first (the expressions name them directly: ``module._modules['a']``)."""
    lines = ["def ___torchkiln_check(G, ___tk_locals, ___tk_bound):"]
    lines += [f"    {name} = ___tk_locals[{name!r}]" for name in f_locals if name.isidentifier()]
    lines.append("    L = ___tk_locals")
    terms = [_fast_term(r, v, i) for i, (r, v) in enumerate(zip(records, values, strict=True))]
    lines.append("    return " + (" and ".join(terms) or "True"))
    namespace: dict[str, Any] = {"__builtins__": builtins, **_HELPERS, "___tk_keys": _keys_of}
    if "torch" in sys.modules:  # as in _namespace: ``X[torch.float64]``
        namespace["torch"] = sys.modules["torch"]
    exec(compile("\n".join(lines), "<torchkiln guard re-check>", "exec"), namespace)
    function: Callable[[Mapping[str, Any], Mapping[str, Any], list[Any]], bool] = namespace["___torchkiln_check"]
    return function


def _short(check: Mapping[str, Any] | None) -> str:
    text = "nothing" if check is None else ", ".join(f"{k}={v!r}" for k, v in check.items())
    return text if len(text) <= 160 else text[:157] + "..."


# -- compile time: the fate of each guard torch's filter saw ---------------------------------------------------
@dataclasses.dataclass
class FatePlanner:
    """Fed every guard-filter entry by compiler's filter; gives each dropped one a re-check description."""

    records: list[GuardRecord] = dataclasses.field(default_factory=list)

    def kept(
        self, name: str, guard_type: str, *, value: Any = None, has_value: bool = False, member: Any = None
    ) -> None:
        if guard_type in KEYED_STATE:
            self.records.append(GuardRecord(name, guard_type, "keyed", "local", why="kept by torch too"))
            return
        check = describe(guard_type, value, member) if has_value and guard_type in VALUE_CAPTURING else None
        if check is None:
            self.records.append(GuardRecord(name, guard_type, "kept", "local"))
            return
        # torch keeps it, but rebuilds it at load from the guard state it pickled, and objects pickled by
        # reference (a class, so a class attribute read as ``dict(type(module).__dict__)['OFFSET']``) come back
        # as they are *in the loading process*: the rebuilt guard then expects the new value and always passes.
        # Measured on torch 2.13 (tests/test_correctness.py::...[class_attribute]). So the compile-time value is
        # re-checked as well.
        self.records.append(
            GuardRecord(
                name, guard_type, "re-checked", "local", check, why="kept by torch, value re-checked", once=True
            )
        )

    def dropped(
        self,
        name: str,
        guard_type: str,
        *,
        is_global: bool,
        value: Any,
        has_value: bool,
        why: str,
        member: Any = None,
    ) -> None:
        scope = "global" if is_global else "local"
        check = describe(guard_type, value, member) if has_value else None
        if check is None:
            reason = f"{why}; no portable description of its value" if has_value else f"{why}; torch gave no value"
            self.records.append(GuardRecord(name, guard_type, "unfated", scope, why=reason))
        else:
            self.records.append(GuardRecord(name, guard_type, "re-checked", scope, check, why=why))

    def self_check(
        self, f_globals: Mapping[str, Any], f_locals: Mapping[str, Any], loader_globals: Mapping[str, Any]
    ) -> dict[str, str]:
        """Evaluate every re-check in the compiling process, from the globals a fresh process will have only.

        Those are the globals the loader passes (``loader_globals``: a function target's module globals) and the
        ones rebuilt from a recorded import name (``root_token``: Dynamo's ``__import_*`` modules, the builtins
        dict). Returns the roots to record (``Rechecker.roots``). A re-check whose expression starts from any other
        global, or that does not reproduce its own value here, could never pass elsewhere: unfated.
        """
        roots = {}
        for name in guard_roots(self.records):
            token = root_token(f_globals.get(name)) if name in f_globals else None
            if token is not None and name not in loader_globals:
                roots[name] = token
        used = guard_roots(self.records)
        portable = {k: v for k, v in f_globals.items() if k not in used or k in roots or k in loader_globals}
        checker = Rechecker(tuple(r for r in self.records if r.fate == "re-checked"), roots)
        failing = {id(record): reason for record, reason in checker.mismatch_pairs(portable, f_locals)}
        self.records = [
            dataclasses.replace(r, fate="unfated", check=None, why=f"{r.why}; {failing[id(r)]}")
            if id(r) in failing
            else r
            for r in self.records
        ]
        return roots

    def unfated(self) -> list[GuardRecord]:
        return [r for r in self.records if r.fate == "unfated"]

    def to_header(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.records]
