"""The model zoo: one tiny config per family people serve, seeded random weights, no downloads.

``build(family)`` returns the model in eval mode; ``inputs(family, batch=..., seq=...)`` returns
``{"args", "kwargs"}`` for ``helpers.child`` (``batch``/``seq`` change the sizes where a family has them: the
dynamic-shape calls). ``FAMILIES`` lists every family with the class it exercises and the settings it needs;
tests/zoo/test_zoo.py runs them and docs/MODELS.md tabulates the results. Llama, GPT-2, ViT and Llava reuse the
configs of tests/helpers/hf_models.py; the diffusers denoisers live in tests/helpers/zoo_diffusers.py.

Settings every family here uses, listed once: ``use_cache=False`` for the language models (one prefill/scoring
forward; a KV-cache object is not a tensor output), special token ids inside the tiny vocabulary, and the default
attention implementation (``sdpa``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from helpers import hf_models, zoo_diffusers

VOCAB = hf_models.VOCAB
SEQ = hf_models.SEQ


@dataclasses.dataclass(frozen=True)
class Family:
    """One row of the zoo: the transformers class, a builder and an inputs function."""

    name: str
    cls: str
    make: Callable[[], torch.nn.Module]
    make_inputs: Callable[..., dict[str, Any]]
    #: a decoder LM: also compiled with ``dynamic=True`` and called at other batch sizes and sequence lengths
    decoder: bool = False


def _ids(batch: int, seq: int, seed: int, vocab: int = VOCAB) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=generator)


def _lm_inputs(seed: int) -> Callable[..., dict[str, Any]]:
    def make(batch: int = 2, seq: int = SEQ) -> dict[str, Any]:
        return {"args": (_ids(batch, seq, seed),), "kwargs": {}}

    return make


def _seeded(make: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return make().eval()

    return build


#: Shared by the decoder LMs below: 2 layers, hidden 64, 4 query heads over 2 KV heads (GQA), head_dim 16.
_DECODER: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "use_cache": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 2,
}


def _qwen2() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**_DECODER))


def _qwen3() -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(**_DECODER, head_dim=16))


def _qwen3_moe() -> torch.nn.Module:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        **_DECODER, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1
    )
    return Qwen3MoeForCausalLM(config)


def _mixtral() -> torch.nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    return MixtralForCausalLM(MixtralConfig(**_DECODER, num_local_experts=4, num_experts_per_tok=2))


def _mistral() -> torch.nn.Module:
    from transformers import MistralConfig, MistralForCausalLM

    # a window shorter than the sequence, so the sliding-window mask is really exercised
    return MistralForCausalLM(MistralConfig(**_DECODER, sliding_window=8))


def _phi3() -> torch.nn.Module:
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(**_DECODER))


def _gemma2() -> torch.nn.Module:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    # alternating sliding (window 8) and global layers, attention and final logit soft-capping
    return Gemma2ForCausalLM(Gemma2Config(**_DECODER, head_dim=16, sliding_window=8))


def _gemma3() -> torch.nn.Module:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(**_DECODER, head_dim=16, sliding_window=8))


def _bert() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return BertModel(config)


def _bert_inputs(batch: int = 2, seq: int = SEQ) -> dict[str, Any]:
    ids = _ids(batch, seq, 21)
    mask = torch.ones_like(ids)
    mask[0, seq - 4 :] = 0  # a padded first row: the attention mask is real
    return {"args": (), "kwargs": {"input_ids": ids, "attention_mask": mask}}


def _t5_encoder() -> torch.nn.Module:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=1
    )
    return T5EncoderModel(config)


def _t5_inputs(batch: int = 2, seq: int = SEQ) -> dict[str, Any]:
    return {"args": (_ids(batch, seq, 22),), "kwargs": {}}


def _bart() -> torch.nn.Module:
    from transformers import BartConfig, BartModel

    config = BartConfig(
        vocab_size=VOCAB,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        use_cache=False,
    )
    return BartModel(config)


def _bart_inputs(batch: int = 2, seq: int = SEQ) -> dict[str, Any]:
    ids = _ids(batch, seq, 23) % (VOCAB - 3) + 3  # no pad/bos/eos in the body
    return {"args": (ids,), "kwargs": {"decoder_input_ids": ids[:, : seq // 2]}}


def _pixels(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _clip_vision() -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
    )
    return CLIPVisionModel(config)


def _siglip_vision() -> torch.nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2
    )
    return SiglipVisionModel(config)


def _vision_inputs(seed: int) -> Callable[..., dict[str, Any]]:
    def make(batch: int = 2, seq: int = SEQ) -> dict[str, Any]:
        del seq
        return {"args": (_pixels(batch, 32, seed),), "kwargs": {}}

    return make


#: Whisper: 16 mel bins, 32 frames in (the conv stem halves them to max_source_positions=16).
_MELS, _FRAMES = 16, 32


def _whisper_encoder() -> torch.nn.Module:
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=_MELS,
        d_model=64,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=_FRAMES // 2,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        decoder_start_token_id=1,
        begin_suppress_tokens=None,
        use_cache=False,
    )
    encoder: torch.nn.Module = WhisperModel(config).get_encoder()
    return encoder


def _whisper_inputs(batch: int = 2, seq: int = SEQ) -> dict[str, Any]:
    del seq
    generator = torch.Generator().manual_seed(24)
    return {"args": (torch.randn(batch, _MELS, _FRAMES, generator=generator),), "kwargs": {}}


# -- Qwen2-VL / Qwen2.5-VL -----------------------------------------------------------------------------------------
#: a 16x16 image in 4x4 patches, 2 frames per temporal patch: a 4x4 grid of patches, merged 2x2 into 4 image tokens.
QWEN_VL_VOCAB = VOCAB
QWEN_VL_IMAGE_TOKEN = VOCAB - 1
QWEN_VL_VIDEO_TOKEN = VOCAB - 2
QWEN_VL_VISION_START = VOCAB - 3
QWEN_VL_VISION_END = VOCAB - 4
_QWEN_VL_GRID = (1, 4, 4)
_QWEN_VL_PATCH = 4
_QWEN_VL_IMAGE_TOKENS = 4


def _qwen_vl_text(config_cls: Any) -> Any:
    settings = {**_DECODER, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}}
    return config_cls(**settings)


def _qwen2_vl() -> torch.nn.Module:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig

    vision = Qwen2VLVisionConfig(
        depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=_QWEN_VL_PATCH, spatial_merge_size=2
    )
    config = Qwen2VLConfig(
        text_config=_qwen_vl_text(Qwen2VLTextConfig),
        vision_config=vision,
        image_token_id=QWEN_VL_IMAGE_TOKEN,
        video_token_id=QWEN_VL_VIDEO_TOKEN,
        vision_start_token_id=QWEN_VL_VISION_START,
        vision_end_token_id=QWEN_VL_VISION_END,
    )
    config.use_cache = False
    return Qwen2VLForConditionalGeneration(config)


def _qwen2_5_vl() -> torch.nn.Module:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLVisionConfig,
    )

    vision = Qwen2_5_VLVisionConfig(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=_QWEN_VL_PATCH,
        spatial_merge_size=2,
        window_size=16,
        fullatt_block_indexes=[1],
    )
    config = Qwen2_5_VLConfig(
        text_config=_qwen_vl_text(Qwen2_5_VLTextConfig),
        vision_config=vision,
        image_token_id=QWEN_VL_IMAGE_TOKEN,
        video_token_id=QWEN_VL_VIDEO_TOKEN,
        vision_start_token_id=QWEN_VL_VISION_START,
        vision_end_token_id=QWEN_VL_VISION_END,
    )
    config.use_cache = False
    return Qwen2_5_VLForConditionalGeneration(config)


def qwen_vl_inputs(batch: int = 1, seq: int = SEQ) -> dict[str, Any]:
    """One image: ``<vision_start> 4 x <image> <vision_end>`` after 4 text tokens, then text up to ``seq + 6``."""
    del batch  # one image, one prompt
    t, h, w = _QWEN_VL_GRID
    text = _ids(1, seq, 25, vocab=VOCAB - 4)
    image = torch.tensor([[QWEN_VL_VISION_START, *[QWEN_VL_IMAGE_TOKEN] * _QWEN_VL_IMAGE_TOKENS, QWEN_VL_VISION_END]])
    input_ids = torch.cat([text[:, :4], image, text[:, 4:]], dim=1)
    mm_token_type_ids = (input_ids == QWEN_VL_IMAGE_TOKEN).int()
    patch_dim = 3 * 2 * _QWEN_VL_PATCH * _QWEN_VL_PATCH  # channels x temporal patch x patch x patch
    generator = torch.Generator().manual_seed(26)
    pixel_values = torch.randn(t * h * w, patch_dim, generator=generator)
    return {
        "args": (),
        "kwargs": {
            "input_ids": input_ids,
            "pixel_values": pixel_values,
            "image_grid_thw": torch.tensor([_QWEN_VL_GRID]),
            "mm_token_type_ids": mm_token_type_ids,
            "use_cache": False,
        },
    }


def vlm_language_inputs(family: str, batch: int = 1, seq: int = SEQ) -> dict[str, Any]:
    """The recipe for a vision-language model whose whole forward does not trace (Qwen2-VL and Qwen2.5-VL on every
    torch; Llava and PaliGemma on torch < 2.13; docs/MODELS.md): the vision tower, the image-token scatter and the
    rope index run eagerly, once per request, and the model called with the merged ``inputs_embeds`` (and the 3-D
    ``position_ids`` the Qwen models compute from ``image_grid_thw``) is the torchkiln artifact: the per-token cost.

    What the language model receives is captured from one eager call of the whole model, so the recipe's output
    equals the whole model's by construction.
    """
    model = FAMILIES[family.removesuffix("_lm")].make()
    kwargs = FAMILIES[family.removesuffix("_lm")].make_inputs(batch=batch, seq=seq)["kwargs"]
    seen: dict[str, Any] = {}
    language_model = model.model.language_model
    hook = language_model.register_forward_pre_hook(lambda _m, _a, kw: seen.update(kw), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**kwargs)
    finally:
        hook.remove()
    recipe = {"inputs_embeds": seen["inputs_embeds"], "use_cache": False}
    if seen.get("position_ids") is not None:
        recipe["position_ids"] = seen["position_ids"]
    if "token_type_ids" in kwargs:  # PaliGemma's prefix-LM mask is built from them at the top level
        recipe["token_type_ids"] = kwargs["token_type_ids"]
    return {"args": (), "kwargs": recipe}


def _recipe(family: str) -> Callable[..., dict[str, Any]]:
    def make(batch: int = 1, seq: int = SEQ) -> dict[str, Any]:
        return vlm_language_inputs(family, batch, seq)

    return make


def _llava_inputs(batch: int = 1, seq: int = SEQ) -> dict[str, Any]:
    del seq
    return hf_models.llava_inputs(batch)


def _paligemma_build() -> torch.nn.Module:
    from compat.roundtrip_cases import tiny_paligemma

    return tiny_paligemma()


def _paligemma_inputs(batch: int = 1, seq: int = SEQ) -> dict[str, Any]:
    del batch, seq
    from compat.roundtrip_cases import paligemma_kwargs

    return {"args": (), "kwargs": paligemma_kwargs()}


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("llama", "LlamaForCausalLM", hf_models.make_llama, hf_models.llama_inputs, decoder=True),
        Family("qwen2", "Qwen2ForCausalLM", _seeded(_qwen2), _lm_inputs(31), decoder=True),
        Family("qwen3", "Qwen3ForCausalLM", _seeded(_qwen3), _lm_inputs(32), decoder=True),
        Family("qwen3_moe", "Qwen3MoeForCausalLM", _seeded(_qwen3_moe), _lm_inputs(33), decoder=True),
        Family("mixtral", "MixtralForCausalLM", _seeded(_mixtral), _lm_inputs(34), decoder=True),
        Family("mistral", "MistralForCausalLM", _seeded(_mistral), _lm_inputs(35), decoder=True),
        Family("phi3", "Phi3ForCausalLM", _seeded(_phi3), _lm_inputs(36), decoder=True),
        Family("gemma2", "Gemma2ForCausalLM", _seeded(_gemma2), _lm_inputs(37), decoder=True),
        Family("gemma3", "Gemma3ForCausalLM", _seeded(_gemma3), _lm_inputs(38), decoder=True),
        Family("gpt2", "GPT2LMHeadModel", hf_models.make_gpt2, hf_models.gpt2_inputs, decoder=True),
        Family("bert", "BertModel", _seeded(_bert), _bert_inputs),
        Family("t5_encoder", "T5EncoderModel", _seeded(_t5_encoder), _t5_inputs),
        Family("bart", "BartModel", _seeded(_bart), _bart_inputs),
        Family("vit", "ViTForImageClassification", hf_models.make_vit, _vision_inputs(13)),
        Family("clip_vision", "CLIPVisionModel", _seeded(_clip_vision), _vision_inputs(27)),
        Family("siglip_vision", "SiglipVisionModel", _seeded(_siglip_vision), _vision_inputs(28)),
        Family("whisper_encoder", "WhisperEncoder", _seeded(_whisper_encoder), _whisper_inputs),
        Family("llava", "LlavaForConditionalGeneration", hf_models.make_llava, _llava_inputs),
        Family("paligemma", "PaliGemmaForConditionalGeneration", _paligemma_build, _paligemma_inputs),
        Family("qwen2_vl", "Qwen2VLForConditionalGeneration", _seeded(_qwen2_vl), qwen_vl_inputs),
        Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", _seeded(_qwen2_5_vl), qwen_vl_inputs),
        # the recipe (vlm_language_inputs): the same models called with inputs_embeds, vision tower eager
        Family("llava_lm", "LlavaForConditionalGeneration", hf_models.make_llava, _recipe("llava_lm")),
        Family("paligemma_lm", "PaliGemmaForConditionalGeneration", _paligemma_build, _recipe("paligemma_lm")),
        Family("qwen2_vl_lm", "Qwen2VLForConditionalGeneration", _seeded(_qwen2_vl), _recipe("qwen2_vl_lm")),
        Family("qwen2_5_vl_lm", "Qwen2_5_VLForConditionalGeneration", _seeded(_qwen2_5_vl), _recipe("qwen2_5_vl_lm")),
        # diffusers: the per-step denoisers of a diffusion pipeline (helpers/zoo_diffusers.py)
        Family("sd_unet", "UNet2DConditionModel", zoo_diffusers.unet_2d_condition, zoo_diffusers.unet_inputs),
        Family("dit", "DiTTransformer2DModel", zoo_diffusers.dit, zoo_diffusers.dit_inputs),
        Family("pixart", "PixArtTransformer2DModel", zoo_diffusers.pixart, zoo_diffusers.pixart_inputs),
        Family("flux", "FluxTransformer2DModel", zoo_diffusers.flux, zoo_diffusers.flux_inputs),
    )
}


def build(family: str) -> torch.nn.Module:
    return FAMILIES[family].make()


def inputs(family: str, batch: int | None = None, seq: int | None = None) -> dict[str, Any]:
    sizes = {k: v for k, v in (("batch", batch), ("seq", seq)) if v is not None}
    return FAMILIES[family].make_inputs(**sizes)
