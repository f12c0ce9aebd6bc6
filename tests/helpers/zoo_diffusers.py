"""The zoo's diffusers rows: the denoisers a diffusion pipeline calls once per step, from tiny configs.

Each builder makes the model from a config with seeded random weights (no downloads); each inputs function returns
``{"args", "kwargs"}`` for ``helpers.child`` the way the pipelines call the model: ``return_dict=False`` and the
timestep as a tensor (a 0-d one for the UNet, one per sample for the transformers). ``batch`` changes the batch size
where the zoo asks for other sizes. helpers/zoo.py adds these families to ``FAMILIES``; diffusers is in the ``dev``
extra.
"""

from __future__ import annotations

from typing import Any

import torch

#: latents: 4 channels of 8x8 (a 64x64 image through a VAE with factor 8), text states of 8 tokens x 16
_CHANNELS, _SIZE, _TEXT_TOKENS, _TEXT_DIM = 4, 8, 8, 16


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def unet_2d_condition() -> torch.nn.Module:
    """Stable Diffusion's UNet shape: a cross-attention down block, a plain one, and their mirrored up blocks."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=_SIZE,
        in_channels=_CHANNELS,
        out_channels=_CHANNELS,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_TEXT_DIM,
        attention_head_dim=4,
    ).eval()


def unet_inputs(batch: int = 2, seq: int = 0) -> dict[str, Any]:
    del seq
    return {
        "args": (_randn(batch, _CHANNELS, _SIZE, _SIZE, seed=41), torch.tensor(500)),
        "kwargs": {"encoder_hidden_states": _randn(batch, _TEXT_TOKENS, _TEXT_DIM, seed=42), "return_dict": False},
    }


def dit() -> torch.nn.Module:
    """DiT: class-conditioned, adaLN-zero blocks over 2x2 patches."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=_CHANNELS,
        out_channels=2 * _CHANNELS,  # noise and variance, as DiT-XL/2
        num_layers=2,
        sample_size=_SIZE,
        patch_size=2,
        num_embeds_ada_norm=10,
    ).eval()


def dit_inputs(batch: int = 2, seq: int = 0) -> dict[str, Any]:
    del seq
    return {
        "args": (_randn(batch, _CHANNELS, _SIZE, _SIZE, seed=43),),
        "kwargs": {
            "timestep": torch.full((batch,), 500),
            "class_labels": torch.arange(batch) % 10,
            "return_dict": False,
        },
    }


def pixart() -> torch.nn.Module:
    """PixArt-alpha: adaLN-single blocks with cross-attention to the text states."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=_CHANNELS,
        out_channels=2 * _CHANNELS,
        num_layers=2,
        cross_attention_dim=16,
        sample_size=_SIZE,
        patch_size=2,
        caption_channels=_TEXT_DIM,
        use_additional_conditions=False,
    ).eval()


def pixart_inputs(batch: int = 2, seq: int = 0) -> dict[str, Any]:
    del seq
    return {
        "args": (_randn(batch, _CHANNELS, _SIZE, _SIZE, seed=44),),
        "kwargs": {
            "encoder_hidden_states": _randn(batch, _TEXT_TOKENS, _TEXT_DIM, seed=45),
            "timestep": torch.full((batch,), 500),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
            "return_dict": False,
        },
    }


def flux() -> torch.nn.Module:
    """Flux: double-stream (image + text) blocks, then single-stream blocks, 3-axis rope over the token ids."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=_CHANNELS * 4,  # the pipeline packs 2x2 latent patches into one token
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_DIM,
        pooled_projection_dim=_TEXT_DIM,
        axes_dims_rope=(4, 4, 8),
    ).eval()


def flux_inputs(batch: int = 1, seq: int = 0) -> dict[str, Any]:
    del seq
    side = _SIZE // 2  # 2x2-packed latents: a 4x4 grid of image tokens
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    return {
        "args": (_randn(batch, side * side, _CHANNELS * 4, seed=46),),
        "kwargs": {
            "encoder_hidden_states": _randn(batch, _TEXT_TOKENS, _TEXT_DIM, seed=47),
            "pooled_projections": _randn(batch, _TEXT_DIM, seed=48),
            "timestep": torch.full((batch,), 0.5),  # Flux takes sigmas in [0, 1]
            "img_ids": img_ids.reshape(side * side, 3),
            "txt_ids": torch.zeros(_TEXT_TOKENS, 3),
            "return_dict": False,
        },
    }
