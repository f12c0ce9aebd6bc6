"""A diffusers pipeline whose UNet is served by torchkiln: compiled in the first process, loaded in every later one.

The pattern diffusers documents for torch.compile, with torchkiln in its place::

    pipe.unet = torchkiln.compile(pipe.unet)       # was: torch.compile(pipe.unet, fullgraph=True)
    pipe(prompt_embeds=..., num_inference_steps=4)

The UNet is what a pipeline runs once per denoising step (twice the batch with classifier-free guidance), so it is
the part worth compiling. The wrapper is lazy: the first step's inputs pick (or build) the artifact; every later
step, and every request of the same size, calls the same one (the timestep is a tensor input, not a constant).
Attribute reads the pipeline makes (``pipe.unet.config``, ``.dtype``, ``.device``) reach the UNet itself. Saving the
pipeline (``save_pretrained``) would record the wrapper as the UNet's class: save ``pipe.unet._orig_mod``'s pipeline,
or assign the UNet back first.

A tiny Stable Diffusion pipeline from configs (UNet2DConditionModel, a one-block AutoencoderKL, DDIM), seeded random
weights, prompt embeddings given directly (no tokenizer or text encoder to download), latents out. Each request's
latents are compared with the eager pipeline's in the same process.
``python examples/diffusers_unet.py [--cache DIR] [--device cpu|cuda] [--json]``, twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

import torchkiln

LATENT, TEXT_TOKENS, TEXT_DIM, STEPS = 8, 8, 16, 4
#: |latents - eager| relative to the latents' largest magnitude: float32 over 4 steps of a random tiny UNet, whose
#: latents grow to ~60 (an absolute 6e-5 here); Inductor reorders reductions
RTOL = 1e-5


def build_pipeline(device: torch.device) -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=LATENT,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16,),  # one level (+ the mid block): the zoo's two-level UNet compiles ~3x longer
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(  # one block: scale factor 1, only its config is read for latents out
        block_out_channels=(8,),
        norm_num_groups=4,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        sample_size=LATENT,
    )
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=None,  # prompt embeddings are passed in
        tokenizer=None,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def requests(device: torch.device) -> list[dict[str, Any]]:
    """Two prompts (their text-encoder outputs, as a server would cache them) with their own seeds."""
    out = []
    for seed in (1, 2):
        generator = torch.Generator().manual_seed(seed)
        out.append(
            {
                "prompt_embeds": torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=generator).to(device),
                "negative_prompt_embeds": torch.zeros(1, TEXT_TOKENS, TEXT_DIM, device=device),
                "seed": seed,
            }
        )
    return out


def generate(pipe: StableDiffusionPipeline, request: dict[str, Any]) -> torch.Tensor:
    generator = torch.Generator(pipe.device).manual_seed(request["seed"])
    out = pipe(
        prompt_embeds=request["prompt_embeds"],
        negative_prompt_embeds=request["negative_prompt_embeds"],
        num_inference_steps=STEPS,
        guidance_scale=5.0,  # > 1: classifier-free guidance, the UNet sees a batch of 2 (unconditional + prompt)
        height=LATENT,
        width=LATENT,
        output_type="latent",
        generator=generator,
    )
    latents: torch.Tensor = out.images
    return latents


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="torchkiln cache (default: TORCHKILN_CACHE or the user cache)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    pipe = build_pipeline(device)
    batch = requests(device)
    with torch.no_grad():
        eager = [generate(pipe, r) for r in batch]  # the reference, before the UNet is replaced

    start = time.perf_counter()
    pipe.unet = torchkiln.compile(pipe.unet, cache=args.cache, name="diffusers-unet")
    with torch.no_grad():
        latents = [generate(pipe, r) for r in batch]
    seconds = time.perf_counter() - start

    unet = pipe.unet
    diffs = [float((got - want).abs().max()) for got, want in zip(latents, eager, strict=True)]
    relative = max(d / float(want.abs().max()) for d, want in zip(diffs, eager, strict=True))
    report = {
        "device": str(device),
        "max_diff_vs_eager": max(diffs),
        "max_relative_diff_vs_eager": relative,
        "matches_eager": relative <= RTOL,
        "unet_calls": len(batch) * STEPS,
        "generate_seconds": round(seconds, 2),
        "specializations": [{"key": s.key, "hit": s.hit, "dynamic": s.dynamic} for s in unet.specializations],
        "hit": all(s.hit for s in unet.specializations),
        "timings": {k: round(v, 2) for k, v in unet.timings.items()},
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{len(batch)} requests x {STEPS} steps in {seconds:.1f} s, max |latents - eager| "
            f"{report['max_diff_vs_eager']:.1e} ({relative:.1e} of the latents' largest magnitude)"
        )
        for spec in unet.specializations:
            print(f"  {'hit ' if spec.hit else 'miss'} {spec.key}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["matches_eager"] else 1)
