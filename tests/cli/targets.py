"""Tiny compile targets and example inputs for the CLI tests, named as ``cli.targets:ATTR`` on the command line.

Kept minimal so that each real compile stays short on a busy 2-core machine; the failing factories exist to
check that a bad TARGET or SPEC is a usage error (exit 2) with a message, not a traceback.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.linear = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


def build_tiny() -> nn.Module:
    return TinyModel().eval()


def tiny_inputs() -> tuple[torch.Tensor]:
    return (torch.ones(2, 8),)


def tiny_inputs_wider_batch() -> tuple[torch.Tensor]:
    return (torch.ones(3, 8),)


def tiny_inputs_as_kwargs() -> tuple[tuple[()], dict[str, torch.Tensor]]:
    return (), {"x": torch.ones(2, 8)}


def scale_shift(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0 + 1.0


def fn_inputs() -> torch.Tensor:
    return torch.arange(6, dtype=torch.float32)


def returns_int() -> int:
    return 3


def raises() -> nn.Module:
    raise RuntimeError("factory exploded")


NOT_CALLABLE = 42


def _make_nested() -> object:
    def nested(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    return nested


#: A nested function: torchkiln.compile accepts it (targets.py says why that is sound).
nested_fn = _make_nested()

#: A lambda: torchkiln.compile refuses it, the CLI says so (exit 2).
lambda_fn = lambda x: x + 1  # noqa: E731 - the point is that it is a lambda
