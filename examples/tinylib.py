"""A stand-in for a library you do not own (a model zoo, a serving engine): it calls ``torch.compile`` itself, at
import and in its functions, and knows nothing about torchkiln."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual spelling


class Encoder(nn.Module):
    def __init__(self, vocab: int = 64, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(F.gelu(self.mix(self.embed(ids))))
        return hidden.mean(dim=1)


@torch.compile(fullgraph=True)
def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a[:, None, :], b[None, :, :], dim=-1)


def load_encoder() -> nn.Module:
    """The library's loader: it builds the model and compiles it, as many libraries do."""
    torch.manual_seed(0)
    return torch.compile(Encoder().eval(), fullgraph=True, dynamic=True)
