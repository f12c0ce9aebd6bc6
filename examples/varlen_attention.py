"""Packed ("varlen") attention by masking, registered with transformers so a Qwen2-VL vision tower traces fullgraph.

Qwen2-VL's vision attention packs every image of a request into one sequence and keeps each image's patches to
themselves. With ``sdpa`` it does that by splitting the sequence at ``cu_seqlens`` (``torch.split(...,
lengths.tolist())``): split sizes read from tensor data, which Dynamo cannot guard on (``GuardOnDataDependentSymNode``).
With a flash-attention implementation it hands ``cu_seqlens`` to the kernel instead. ``masked_varlen_sdpa`` is such
an implementation for any device: one SDPA call over the whole packed sequence with a block-diagonal mask built
from ``cu_seqlens`` by comparisons, so every shape depends only on the number of patches. Same result as the split
(each patch attends to the patches of its own image), one kernel instead of one per image.

It lives in its own module, not in the example script, because the compiled artifact refers to it by name: a
function defined in ``__main__`` cannot be loaded by another script.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812 - the usual spelling

#: transformers takes the ``cu_seqlens`` path (``is_flash_attention_requested``) for any implementation whose name
#: contains "flash"; this one is plain SDPA, the name only selects that path.
NAME = "flash_varlen_masked_sdpa"


def masked_varlen_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    cu_seq_lens_q: torch.Tensor,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``query``/``key``/``value``: (1, heads, patches, head_dim), images packed along ``patches``; returns
    (1, patches, heads, head_dim) as transformers' attention functions do."""
    del module, attention_mask, kwargs  # no padding mask in a packed sequence; max_length_* is for flash kernels
    patches = query.shape[2]
    position = torch.arange(patches, device=query.device, dtype=cu_seq_lens_q.dtype)
    image = torch.searchsorted(cu_seq_lens_q[1:], position, right=True)  # which image each patch belongs to
    same_image = image[:, None] == image[None, :]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=same_image, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``NAME`` a transformers attention implementation (idempotent); returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, masked_varlen_sdpa)
    return NAME
