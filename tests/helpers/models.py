"""Tiny seeded models and functions for the end-to-end API tests (cheap to compile: one or two kernels)."""

from __future__ import annotations

import torch
from torch import nn


class TinyMLP(nn.Module):
    """Linear -> GELU -> Linear: the smallest model that still exercises parameters and a fused kernel."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        return out


def tiny_mlp() -> TinyMLP:
    # Seeded so that every process builds the same weights and outputs can be compared across processes.
    torch.manual_seed(0)
    return TinyMLP().eval()


def mlp_inputs(batch: int = 4, dtype: str = "float32") -> tuple[torch.Tensor]:
    generator = torch.Generator().manual_seed(1234 + batch)
    return (torch.randn(batch, 16, generator=generator).to(getattr(torch, dtype)),)


def cuda_mlp() -> TinyMLP:
    """``tiny_mlp`` on the GPU (tests/gpu)."""
    return tiny_mlp().cuda()


def cuda_mlp_inputs(batch: int = 4) -> tuple[torch.Tensor]:
    return tuple(x.cuda() for x in mlp_inputs(batch))  # type: ignore[return-value]


def scaled_tanh(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A plain function target (functions are compiled against their own module globals)."""
    return torch.tanh(x * 2.0) + y.sin()


def tanh_inputs(batch: int = 4, dtype: str = "float32") -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(99 + batch)
    x, y = torch.randn(batch, 8, generator=generator), torch.randn(batch, 8, generator=generator)
    return x.to(getattr(torch, dtype)), y.to(getattr(torch, dtype))


class Branchy(nn.Module):
    """A forward that reads ``self.training``: train and eval mode are two different graphs (x2 and x3)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc(x)
        return y * 2.0 if self.training else y * 3.0


def branchy() -> Branchy:
    torch.manual_seed(0)
    return Branchy().eval()
