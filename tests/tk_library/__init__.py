"""A library the tests do not control: it calls ``torch.compile`` itself, at import and in its functions, the way
transformers, diffusers or a serving engine does. Nothing here knows about torchkiln."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual spelling


class Scorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(F.silu(self.proj(x)))
        return out


class Head(nn.Module):
    """A module whose forward is decorated where it is defined."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)

    @torch.compile(fullgraph=True)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.relu(self.fc(x)) * 0.5
        return out


def make_scorer() -> Scorer:
    torch.manual_seed(0)
    return Scorer().eval()


def make_head() -> Head:
    torch.manual_seed(1)
    return Head().eval()


# Compiled at import: the library's model, as a library builds it.
SCORER = torch.compile(make_scorer(), fullgraph=True)


@torch.compile(fullgraph=True)
def gelu_mix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.gelu(x) * torch.sigmoid(y)


@torch.compile  # torch.compile's default fullgraph=False: torchkiln hands this one to torch
def cosine_plus_one(x: torch.Tensor) -> torch.Tensor:
    return torch.cos(x) + 1


def score(x: torch.Tensor) -> torch.Tensor:
    return SCORER(x)


def compiled_forward_scorer() -> Scorer:
    """The transformers pattern: ``model.forward = torch.compile(model.forward, ...)``."""
    model = make_scorer()
    model.forward = torch.compile(model.forward, fullgraph=True, dynamic=True)  # type: ignore[method-assign]
    return model
