"""Tiny-config transformers models with seeded random weights (no downloads), and their example inputs.

Each ``make_*`` builds the model from a config in eval mode; each ``*_inputs`` returns ``{"args", "kwargs"}`` for
``helpers.child``. The settings a model needs to compile fullgraph are set here and listed in docs/MODELS.md:
``use_cache=False`` for the language models (a KV-cache object is not a tensor and breaks fullgraph).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    ViTConfig,
    ViTForImageClassification,
)

VOCAB = 128
SEQ = 16


def _tiny_llama_config(**overrides: Any) -> LlamaConfig:
    settings: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "use_cache": False,
    }
    settings.update(overrides)
    return LlamaConfig(**settings)


def _ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=generator)


def make_llama(attn_implementation: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    model: torch.nn.Module = LlamaForCausalLM(_tiny_llama_config(attn_implementation=attn_implementation))
    return model.eval()


def llama_inputs(batch: int = 2, seq: int = SEQ) -> dict[str, Any]:
    return {"args": (_ids(batch, seq, 11),), "kwargs": {}}


def make_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    model: torch.nn.Module = GPT2LMHeadModel(config)
    return model.eval()


def gpt2_inputs(batch: int = 2, seq: int = SEQ) -> dict[str, Any]:
    return {"args": (_ids(batch, seq, 12),), "kwargs": {}}


def make_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    settings: dict[str, Any] = {
        "image_size": 32,
        "patch_size": 8,
        "num_channels": 3,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "num_labels": 10,
    }
    model: torch.nn.Module = ViTForImageClassification(ViTConfig(**settings))
    return model.eval()


def vit_inputs(batch: int = 2) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(13)
    return {"args": (torch.randn(batch, 3, 32, 32, generator=generator),), "kwargs": {}}


#: Llava: a 32x32 image in 8x8 patches is 16 patch features (the CLS feature is dropped), so the prompt carries 16
#: image tokens that the model replaces with projected image features.
IMAGE_TOKEN = VOCAB - 1
IMAGE_TOKENS = 16


def make_llava() -> torch.nn.Module:
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_tiny_llama_config(),
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config.use_cache = False
    model: torch.nn.Module = LlavaForConditionalGeneration(config)
    return model.eval()


def llava_inputs(batch: int = 1) -> dict[str, Any]:
    text = _ids(batch, SEQ, 14) % (VOCAB - 1)  # no stray image tokens in the text
    image = torch.full((batch, IMAGE_TOKENS), IMAGE_TOKEN, dtype=torch.long)
    input_ids = torch.cat([text[:, :4], image, text[:, 4:]], dim=1)
    generator = torch.Generator().manual_seed(15)
    pixel_values = torch.randn(batch, 3, 32, 32, generator=generator)
    return {"args": (), "kwargs": {"input_ids": input_ids, "pixel_values": pixel_values, "use_cache": False}}
