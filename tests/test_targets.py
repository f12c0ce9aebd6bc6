"""targets.py and digests.py: one rule for what can be compiled, one digest per kind of code."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
import torch

from torchkiln import digests, targets
from torchkiln.errors import InvalidTargetError


def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def test_modules_functions_and_bound_methods_are_targets() -> None:
    layer = torch.nn.Linear(2, 2)
    assert targets.validate(layer) is True
    assert targets.validate(_double) is False
    assert targets.validate(layer.forward) is False  # a function target; its owner is the `self` argument
    assert targets.unwrap(layer.forward) is torch.nn.Linear.forward


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (lambda x: x, "a lambda has no name"),
        (functools.partial(_double), "module-level function"),
        (object(), "module-level function"),
        (torch.relu, "module-level function"),
    ],
)
def test_what_no_other_process_can_rebuild_is_refused(target: object, match: str) -> None:
    with pytest.raises(InvalidTargetError, match=match) as info:
        targets.validate(target)
    assert info.value.fix


def test_qualname() -> None:
    assert targets.qualname(_double) == f"{__name__}._double"
    assert targets.qualname(torch.nn.Linear) == "torch.nn.modules.linear.Linear"


_PROGRAM = """
from torchkiln import digests
def f(x):
    return x in {"alpha", "beta", "gamma", "delta"} or (lambda: {"eps", "zeta"})()
print(digests.code_digest(f.__code__))
"""


def test_code_digest_is_the_same_in_every_process() -> None:
    # A frozenset constant iterates in a hash-randomized order: a repr-based digest differed between processes.
    seen = {
        subprocess.run(
            [sys.executable, "-c", _PROGRAM], env={"PYTHONHASHSEED": seed, "PATH": ""}, text=True, capture_output=True,
            check=True, cwd="/",
        ).stdout.strip()
        for seed in ("1", "2", "3", "4")
    }  # fmt: skip
    assert len(seen) == 1 and len(seen.pop()) == 64


def _code_of(source: str) -> object:
    scope: dict[str, object] = {}
    exec(source, scope)
    return scope["f"].__code__  # type: ignore[attr-defined]


def test_code_digest_ignores_lines_but_not_code() -> None:
    first = digests.code_digest(_code_of("def f(x):\n    return x + 1\n"))  # type: ignore[arg-type]
    assert digests.code_digest(_code_of("\n\n\ndef f(x):\n    return x + 1\n")) == first  # type: ignore[arg-type]
    assert digests.code_digest(_code_of("def f(x):\n    return x + 2\n")) != first  # type: ignore[arg-type]


def test_file_digest_follows_the_content(tmp_path: object) -> None:
    path = tmp_path / "m.py"  # type: ignore[operator]
    path.write_text("a = 1\n")
    first = digests.file_digest(str(path))
    path.write_text("a = 22\n")
    assert digests.file_digest(str(path)) not in (None, first)
    assert digests.file_digest(str(path / "missing")) is None


def _nested(flag: bool) -> object:
    if flag:

        def inner(x: torch.Tensor) -> torch.Tensor:
            return x + 1

    else:

        def inner(x: torch.Tensor) -> torch.Tensor:
            return x + 2

    return inner


def test_nested_functions_are_targets_keyed_by_their_code() -> None:
    """One qualname, two bodies: the key's target part tells them apart (targets.py says why this is sound)."""
    from torchkiln.describe import describe_target

    plus_one, plus_two = _nested(True), _nested(False)
    assert targets.validate(plus_one) is False
    assert plus_one.__qualname__ == plus_two.__qualname__  # type: ignore[attr-defined]
    assert describe_target(plus_one) != describe_target(plus_two)
    assert describe_target(plus_one) == describe_target(_nested(True))  # another closure instance, same code
