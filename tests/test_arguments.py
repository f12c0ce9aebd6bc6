"""arguments.py and reasons.py: a compile never starts doomed, and a failed one says torch's real reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchkiln
from helpers.models import tiny_mlp
from torchkiln.errors import CompileError, ConfigError, InvalidArgumentError
from torchkiln.reasons import exception_reason, user_location


@pytest.mark.parametrize(
    ("inputs", "kwargs", "extra", "match"),
    [
        (None, {"x": torch.randn(2, 16)}, {}, "example_kwargs without example_inputs"),
        ((torch.randn(2, 16),), None, {"fullgraph": False}, "fullgraph=False"),
        ((torch.randn(2, 16),), None, {"mode": "fast"}, "mode is 'fast'"),
        ((torch.randn(2, 16),), None, {"mode": "max-autotune", "options": {"max_autotune": True}}, "both mode"),
        ((torch.randn(2, 16),), None, {"options": {"no_such_option": 1}}, "not an Inductor option"),
        ((torch.randn(2, 16),), None, {"options": {"max_autotune": "yes"}}, "Inductor expects a bool"),
        ("x", None, {}, "example_inputs is a str"),
        ({"x": 1}, None, {}, "example_inputs is a dict"),
        ((np.zeros((2, 16), dtype=np.float32),), None, {}, r"example_inputs\[0\] is a numpy array"),
        ((torch.randn(2, 16),), [1], {}, "example_kwargs is a list"),
        ((torch.randn(2, 16),), {"m": [np.zeros(1)]}, {}, r"example_kwargs\['m'\]\[0\] is a numpy array"),
        ((torch.randn(2, 16),), None, {"cache": 123}, "cache is a int"),
        ((torch.randn(2, 16),), None, {"dynamic": "yes"}, "dynamic is 'yes'"),
        ((torch.randn(2, 16),), None, {"backend": lambda gm, ex: gm}, "registered backend name"),
        ((torch.randn(2, 16),), None, {"options": ["max-autotune"]}, "options is a list"),
    ],
)
def test_a_bad_argument_fails_before_any_work(
    inputs: Any, kwargs: Any, extra: dict[str, Any], match: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgumentError, match=match) as info:
        torchkiln.compile(tiny_mlp(), inputs, example_kwargs=kwargs, **({"cache": str(tmp_path)} | extra))
    assert isinstance(info.value, TypeError) and isinstance(info.value, ConfigError) and info.value.fix
    assert not list(tmp_path.rglob("*.tkln"))


def test_a_single_tensor_is_the_one_positional_input(tmp_path: Path) -> None:
    from torchkiln.arguments import example_args

    x = torch.randn(2, 16)
    assert example_args(x) == (x,) and example_args([x]) == (x,) and example_args(()) == ()


def test_a_wrong_shape_reports_the_real_reason_and_the_users_line(tmp_path: Path) -> None:
    # Dynamo's own message is "RuntimeError when making fake tensor call"; the cause was only in torch's log.
    with pytest.raises(CompileError) as info:
        torchkiln.compile(tiny_mlp(), (torch.randn(2, 5),), cache=str(tmp_path))
    message = str(info.value)
    assert "a and b must have same reduction dim" in message, message
    assert "models.py:" in message and "in forward" in message, message


def test_reason_of_a_chain_and_of_a_bare_exception() -> None:
    try:
        try:
            raise RuntimeError("the cause\nmore")
        except RuntimeError as inner:
            raise ValueError('wrapped\nfrom user code:\n   File "/src/m.py", line 3, in forward\n    x\n') from inner
    except ValueError as exc:
        assert exception_reason(exc) == "RuntimeError: the cause (torch: ValueError: wrapped) at /src/m.py:3 in forward"
    assert exception_reason(KeyError()) == "KeyError"
    assert user_location(RuntimeError("no frames here")) is None
