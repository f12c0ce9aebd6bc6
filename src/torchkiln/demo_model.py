"""The demo model: a small pure-torch transformer shipped in the package, so the demo needs nothing extra.

It is a decoder-only language model (hidden 256, 4 layers, 4 heads, vocab 1000) fed a batch of 2 x 128 token
ids, with weights drawn from a fixed seed so every process builds the same model (the benchmark compares each
phase's first output against the eager one). Its forward is written to compile with ``fullgraph=True``: no
data-dependent Python control flow, attention through ``scaled_dot_product_attention``.

The two module-level factories are the public surface, importable as ``torchkiln.demo_model:build_demo_model``
and ``torchkiln.demo_model:demo_inputs`` (the form ``torchkiln compile TARGET --inputs SPEC`` takes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812  (torch's own spelling, kept for readability)
from torch import nn

__all__ = [
    "HIDDEN",
    "LAYERS",
    "HEADS",
    "VOCAB",
    "BATCH",
    "SEQ",
    "TinyTransformer",
    "build_demo_model",
    "demo_inputs",
]

HIDDEN = 256
LAYERS = 4
HEADS = 4
VOCAB = 1000
BATCH = 2
SEQ = 128
#: Weights and inputs come from their own generators with fixed seeds, so building the model does not
#: depend on (or disturb) the caller's global RNG state.
WEIGHT_SEED = 0
INPUT_SEED = 1


class Block(nn.Module):
    """One pre-norm transformer block: causal self-attention then a GELU MLP, each with a residual."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, 4 * hidden)
        self.fc2 = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(hidden, dim=-1)
        # (B, S, H*D) -> (B, H, S, D), the layout scaled_dot_product_attention expects.
        q, k, v = (t.view(batch, seq, self.heads, hidden // self.heads).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(batch, seq, hidden))
        out: torch.Tensor = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return out


class TinyTransformer(nn.Module):
    """Token + position embeddings, ``layers`` blocks, a final norm and a language-model head (logits)."""

    def __init__(
        self,
        vocab: int = VOCAB,
        hidden: int = HIDDEN,
        layers: int = LAYERS,
        heads: int = HEADS,
        seq: int = SEQ,
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(seq, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tok(input_ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.ln_f(x))
        return logits


def build_demo_model(device: str = "cpu") -> nn.Module:
    """The demo model in eval mode with seeded random weights, on ``device``."""
    # fork_rng keeps the caller's global RNG untouched while the default initializers draw from it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        model = TinyTransformer()
    return model.eval().to(device)


def demo_inputs(device: str = "cpu") -> tuple[torch.Tensor]:
    """A batch of ``BATCH`` x ``SEQ`` token ids drawn from a fixed seed, on ``device``."""
    generator = torch.Generator().manual_seed(INPUT_SEED)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator, dtype=torch.long)
    return (ids.to(device),)
