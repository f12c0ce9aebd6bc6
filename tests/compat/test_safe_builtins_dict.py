"""``safe_builtins_dict`` (fix builtins-runtime-env): keeps exactly the entries that pickle, never raises.

The oracle is by construction (values whose picklability is known from their kind: plain data and module-level
builtins pickle; locks, generators, lambdas, local classes and objects whose ``__reduce__`` raises do not), so
this file needs no pickler of its own; where the running torch ships upstream's ``_safe_builtins_dict`` (2.12+),
the two must agree on every entry of ``builtins.__dict__`` plus the planted values.
"""

from __future__ import annotations

import builtins
import threading
import types
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchkiln.compat.fixes.builtins_runtime_env import safe_builtins_dict

pytestmark = pytest.mark.compat  # the heart of the builtins fix: checked on every torch lane


class _ExplodingReduce:
    """Pickling it raises a plain RuntimeError (not a PicklingError): it must still be dropped, not raised."""

    def __reduce__(self) -> Any:
        raise RuntimeError("refuses to be pickled")


def _generator() -> Any:
    yield 1


def _local_instance() -> Any:
    class Local:  # pickle cannot find <locals> classes by name
        pass

    return Local()


#: Makers of values that can never pickle, each a fresh object per call.
UNPICKLABLE: dict[str, Callable[[], Any]] = {
    "lock": threading.Lock,
    "generator": _generator,
    "lambda": lambda: lambda: 0,
    "local-class-instance": _local_instance,
    "exploding-reduce": _ExplodingReduce,
    "tuple-holding-a-lock": lambda: (1, threading.Lock()),
}

#: Builtins that pickle by reference (module-level names) and constants.
PICKLABLE_BUILTINS = [len, print, int, dict, ValueError, KeyboardInterrupt, None, True, Ellipsis, NotImplemented]

plain_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)

#: (value, picklable?) pairs
entries = st.one_of(
    plain_data.map(lambda v: (v, True)),
    st.sampled_from(PICKLABLE_BUILTINS).map(lambda v: (v, True)),
    st.sampled_from(sorted(UNPICKLABLE)).map(lambda kind: (UNPICKLABLE[kind](), False)),
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=12), entries, max_size=20))
def test_keeps_exactly_the_picklable_entries_in_order(mixed: dict[str, tuple[Any, bool]]) -> None:
    source = {name: value for name, (value, _) in mixed.items()}
    result = safe_builtins_dict(source)
    assert list(result) == [name for name, (_, picklable) in mixed.items() if picklable]
    assert all(result[name] is source[name] for name in result)  # kept as is, not copied


def _planted() -> dict[str, Any]:
    return {f"__planted_{kind}": make() for kind, make in UNPICKLABLE.items()}


def test_every_builtin_plus_planted_values() -> None:
    source = {**builtins.__dict__, **_planted()}
    result = safe_builtins_dict(source)  # never raises
    assert not any(name.startswith("__planted_") for name in result)
    assert list(result) == [name for name in source if name in result]  # order kept
    for name, value in builtins.__dict__.items():
        # Every builtin function, class and constant is a module-level name or a singleton: all pickle.
        constant = any(value is c for c in (None, True, False, Ellipsis, NotImplemented))
        if constant or isinstance(value, (type, types.BuiltinFunctionType, str)):
            assert name in result, name
    assert result["len"] is len and result["type"] is type


def test_does_not_modify_its_input() -> None:
    source = {"len": len, "lock": threading.Lock()}
    before = dict(source)
    assert safe_builtins_dict(source) == {"len": len}
    assert source == before


def test_agrees_with_upstream_where_torch_ships_it() -> None:
    from torch._dynamo import convert_frame

    upstream = getattr(convert_frame, "_safe_builtins_dict", None)
    if upstream is None:
        pytest.skip("this torch predates pytorch#177558 (no upstream _safe_builtins_dict to compare with)")
    source = {**builtins.__dict__, **_planted()}
    assert list(safe_builtins_dict(source)) == list(upstream(source))
