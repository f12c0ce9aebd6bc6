"""Serve a vision-language model (Qwen2-VL) from two torchkiln artifacts: its vision tower and its language model.

Qwen2-VL's whole ``forward`` does not trace as one graph (docs/MODELS.md, "Vision-language models"): the vision
tower splits attention by per-image lengths read from tensor data, and the 3-D rope index is built in a Python loop
over the token types. So a request is served in three steps, two of them compiled:

1. **vision tower** (a torchkiln artifact): the packed image patches -> image embeddings. The data-dependent parts
   are computed eagerly from ``image_grid_thw`` with transformers' own ``vision_utils`` helpers (``position_ids``,
   ``cu_seqlens``, ``max_seqlen``: the documented way to precompute them for ``torch.compile``) and passed in, and
   attention masks images apart instead of splitting them (``varlen_attention.py``);
2. **eager glue**, once per request: token embeddings, the image-token scatter (``masked_scatter``), the 3-D rope
   index (``get_rope_index``);
3. **language model** (a torchkiln artifact, ``dynamic=True``): the whole model called with ``inputs_embeds`` and the
   3-D ``position_ids``, the per-token cost; one artifact serves every prompt length.

Each request's logits are compared with the eager model's own ``forward`` (``input_ids`` + ``pixel_values``, sdpa
vision attention) in the same process. The first process compiles both artifacts; a later one loads them (hits).
Tiny config, seeded random weights: ``python examples/vlm_serve.py [--cache DIR] [--device cpu|cuda] [--json]``,
twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids

import torchkiln

sys.path.insert(0, str(Path(__file__).resolve().parent))  # varlen_attention lives beside this file
import varlen_attention  # after the path above

VOCAB = 128
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = VOCAB - 1, VOCAB - 2, VOCAB - 3, VOCAB - 4
PATCH, MERGE, TEMPORAL = 4, 2, 2  # 4x4-pixel patches, 2x2 patches per image token, 2 frames per temporal patch
#: what the language model must match the eager model to (float32; Inductor reorders reductions)
ATOL = 1e-4


def build_model() -> Qwen2VLForConditionalGeneration:
    torch.manual_seed(0)
    vision = Qwen2VLVisionConfig(
        depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE
    )
    text = Qwen2VLTextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3]},
        use_cache=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )
    config.use_cache = False
    return Qwen2VLForConditionalGeneration(config).eval()


def make_request(seed: int, grid_hw: tuple[int, int], text_tokens: int) -> dict[str, torch.Tensor]:
    """What a processor would hand the model: one image as packed patches and a prompt with its image tokens."""
    generator = torch.Generator().manual_seed(seed)
    h, w = grid_hw
    image_tokens = (h // MERGE) * (w // MERGE)
    text = torch.randint(3, VOCAB - 4, (1, text_tokens), generator=generator)
    image = torch.tensor([[VISION_START, *[IMAGE_TOKEN] * image_tokens, VISION_END]])
    input_ids = torch.cat([text[:, :2], image, text[:, 2:]], dim=1)
    return {
        "input_ids": input_ids,
        "pixel_values": torch.randn(h * w, 3 * TEMPORAL * PATCH * PATCH, generator=generator),
        "image_grid_thw": torch.tensor([[1, h, w]]),
        "mm_token_type_ids": (input_ids == IMAGE_TOKEN).int(),
    }


def requests() -> list[dict[str, torch.Tensor]]:
    # two images of one size (one vision artifact) and prompts of 7 and 12 tokens (one dynamic language artifact)
    return [make_request(1, (4, 4), 3), make_request(2, (4, 4), 8)]


def vision_inputs(model: Qwen2VLForConditionalGeneration, request: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The vision tower's inputs, its data-dependent parts computed eagerly from ``image_grid_thw``."""
    visual = model.model.visual
    grid = request["image_grid_thw"]
    cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid, visual.config)
    return {
        "hidden_states": request["pixel_values"].to(visual.dtype),
        "grid_thw": grid,
        "position_ids": get_vision_position_ids(grid, visual.spatial_merge_size),
        "cu_seqlens": cu_seqlens,
        "max_seqlen": max_seqlen,
    }


def language_inputs(
    model: Qwen2VLForConditionalGeneration, request: dict[str, torch.Tensor], image_embeds: torch.Tensor
) -> dict[str, Any]:
    """The eager glue: token embeddings with the image embeddings scattered in, and the 3-D rope index."""
    ids = request["input_ids"]
    embeds = model.model.get_input_embeddings()(ids)
    image_mask = (ids == IMAGE_TOKEN).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(image_mask, image_embeds.to(embeds.dtype))
    position_ids, _ = model.model.get_rope_index(
        ids, request["mm_token_type_ids"], image_grid_thw=request["image_grid_thw"]
    )
    return {"inputs_embeds": embeds, "position_ids": position_ids, "use_cache": False}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="torchkiln cache (default: TORCHKILN_CACHE or the user cache)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    model = build_model().to(device)
    batch = [{k: v.to(device) for k, v in r.items()} for r in requests()]
    with torch.no_grad():  # the reference: the eager model's own forward, sdpa vision attention
        eager = [model(**r, use_cache=False).logits for r in batch]

    # From here on the vision tower attends through the masked varlen path (its config only; the text model keeps
    # sdpa). Set after the reference, so the reference is the model as transformers ships it.
    model.model.visual.config._attn_implementation = varlen_attention.register()

    start = time.perf_counter()
    visual = lm = None
    logits, first_output_s = [], None
    with torch.no_grad():
        for request in batch:
            v_in = vision_inputs(model, request)
            if visual is None:
                visual = torchkiln.compile(
                    model.model.visual, (), example_kwargs=v_in, cache=args.cache, name="vlm-serve-vision"
                )
            image_embeds = visual(**v_in).pooler_output
            l_in = language_inputs(model, request, image_embeds)
            if lm is None:
                lm = torchkiln.compile(
                    model, (), example_kwargs=l_in, dynamic=True, cache=args.cache, name="vlm-serve-lm"
                )
            logits.append(lm(**l_in).logits)
            if first_output_s is None:
                first_output_s = time.perf_counter() - start
    seconds = time.perf_counter() - start
    assert visual is not None and lm is not None

    diffs = [float((got - want).abs().max()) for got, want in zip(logits, eager, strict=True)]
    served = {"vision": visual, "language": lm}
    report = {
        "device": str(device),
        "max_diff_vs_eager": max(diffs),
        "matches_eager": max(diffs) <= ATOL,
        "first_output_seconds": round(first_output_s or 0.0, 2),
        "serve_seconds": round(seconds, 2),
        "requests": [{"tokens": r["input_ids"].shape[1], "patches": r["pixel_values"].shape[0]} for r in batch],
        "specializations": {
            name: [{"key": s.key, "hit": s.hit, "dynamic": s.dynamic} for s in obj.specializations]
            for name, obj in served.items()
        },
        "hit": all(s.hit for obj in served.values() for s in obj.specializations),
        "timings": {name: {k: round(v, 2) for k, v in obj.timings.items()} for name, obj in served.items()},
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{len(batch)} requests in {seconds:.1f} s (first output {report['first_output_seconds']} s), "
            f"max |logits - eager| {report['max_diff_vs_eager']:.1e}"
        )
        for name, obj in served.items():
            for spec in obj.specializations:
                print(f"  {name:8} {'hit ' if spec.hit else 'miss'} {spec.key}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["matches_eager"] else 1)
