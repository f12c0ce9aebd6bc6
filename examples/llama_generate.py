"""A transformers causal LM whose ``forward`` torchkiln compiles, driven by ``model.generate()``.

The pattern transformers documents for torch.compile, with torchkiln in its place::

    model.forward = torchkiln.compile(model.forward, dynamic=True)   # was: torch.compile(model.forward, ...)
    model.generate(input_ids, max_new_tokens=8)

``generate()`` calls ``forward`` with a growing KV cache (``use_cache=True``, its default): a prefill of the whole
prompt, then one token at a time. ``dynamic=True`` makes the sequence length symbolic, so prompts of other lengths
reuse the same artifacts; the cache object's state splits them into a few specializations (the prefill, the first
decode step, the later ones), each a guard-checked artifact of its own. The first process compiles them; every
later process loads them (seconds, no Dynamo, no Inductor). On torch 2.13 with transformers 5 this traces
fullgraph with the KV cache; on a release where the cache object breaks the graph, pass ``use_cache=False``
(``--no-kv-cache``), which recomputes the whole sequence each step (one dynamic artifact).

Tiny config, random (seeded) weights, CPU: ``python examples/llama_generate.py [--cache DIR] [--json]``, twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import torchkiln

VOCAB = 128


def build_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=None,  # random weights: never stop early, every run generates the same number of tokens
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def prompts() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(1, VOCAB, (1, length), generator=generator) for length in (6, 9)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="torchkiln cache (default: TORCHKILN_CACHE or the user cache)")
    parser.add_argument("--no-kv-cache", action="store_true", help="generate with use_cache=False")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    settings = {"max_new_tokens": 6, "do_sample": False, "use_cache": not args.no_kv_cache}

    model = build_model()
    with torch.no_grad():
        eager = [model.generate(ids, **settings) for ids in prompts()]  # the reference, before compiling

    start = time.perf_counter()
    model.forward = torchkiln.compile(model.forward, dynamic=True, cache=args.cache)  # type: ignore[method-assign]
    with torch.no_grad():
        generated = [model.generate(ids, **settings) for ids in prompts()]
    seconds = time.perf_counter() - start

    compiled = model.forward
    report = {
        "same_tokens_as_eager": all(torch.equal(a, b) for a, b in zip(generated, eager, strict=True)),
        "generate_seconds": round(seconds, 2),
        "specializations": [{"key": s.key, "hit": s.hit, "dynamic": s.dynamic} for s in compiled.specializations],
        "hit": all(s.hit for s in compiled.specializations),
        "tokens": [ids.tolist()[0] for ids in generated],
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"generate() with torchkiln: {seconds:.1f} s, same tokens as eager: {report['same_tokens_as_eager']}")
        for spec in compiled.specializations:
            print(f"  {'hit ' if spec.hit else 'miss'} {spec.key}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["same_tokens_as_eager"] else 1)
