"""An inference server's start with ``torchkiln.preload()``: the hit's imports and artifact read overlap the model's
construction and its weights being read from a safetensors file.

The documented pattern (docs/STARTUP.md)::

    import torch, transformers, safetensors.torch, torchkiln   # the program's own imports first
    torchkiln.preload(name="server-llm")                      # returns at once; a thread does the rest
    model = build(); load_model(model, "weights.safetensors") # meanwhile
    fast = torchkiln.compile(model, (x,), name="server-llm")  # joins the preload, then loads

The first process finds no artifact: preload only imports, ``compile`` compiles and publishes. Every later process
is a hit whose imports, store read, verification, kernel restore and torch's deserialization happened while the
model was built and its weights read, so what is left between weights-ready and the first output is the header's
check against the call and the first call. The report has that time (``weights_to_first_output_s``) and what
preload did (``preload``: ``deserialized`` names the artifact it loaded ahead).

The checkpoint is written once (``--weights``, default under the temp dir) from a seeded tiny Llama, the way a
deploy ships one; the server then builds the model from its config and reads the weights from that file.
Tiny config, CPU: ``python examples/server_preload.py [--cache DIR] [--weights FILE] [--device cpu|cuda] [--json]``,
twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from transformers import LlamaConfig, LlamaForCausalLM

import torchkiln
from torchkiln import preloader

NAME = "server-preload-llm"
VOCAB = 256
BATCH, TOKENS = 2, 16  # the server's one request shape (a fixed batch of fixed-length prompts)


def config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )


def ensure_checkpoint(path: Path) -> bool:
    """Write the seeded checkpoint if it is missing (the deploy's job, not the server's); True if it wrote it."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tmp = path.with_suffix(".tmp")
    save_model(LlamaForCausalLM(config()), str(tmp))
    tmp.replace(path)  # a server starting meanwhile never reads half a file
    return True


def requests() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(3, VOCAB, (BATCH, TOKENS), generator=generator) for _ in range(3)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="torchkiln cache (default: TORCHKILN_CACHE or the user cache)")
    default_weights = Path(tempfile.gettempdir()) / "torchkiln-examples" / "server_preload.safetensors"
    parser.add_argument("--weights", type=Path, default=default_weights, help="the safetensors checkpoint")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--no-preload", action="store_true", help="skip preload (to measure what it saves)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    wrote_checkpoint = ensure_checkpoint(args.weights)

    # --- the server's start ---
    start = time.perf_counter()
    if not args.no_preload:
        torchkiln.preload(name=NAME, cache=args.cache, device=args.device)  # first: everything after overlaps it

    model = LlamaForCausalLM(config()).eval()  # meanwhile: build the model ...
    load_model(model, str(args.weights), device=args.device)  # ... and read its weights
    model.to(args.device)
    weights_ready = time.perf_counter()

    batch = [ids.to(args.device) for ids in requests()]
    with torch.no_grad():
        fast = torchkiln.compile(model, (batch[0],), name=NAME, cache=args.cache)  # joins the preload, loads
        outputs = [fast(ids).logits for ids in batch]
        first_output = time.perf_counter()
        eager = [model(ids).logits for ids in batch]  # the reference, after the timed part
    job = preloader.current()

    max_diff = max(float((got - want).abs().max()) for got, want in zip(outputs, eager, strict=True))
    report = {
        "device": args.device,
        "wrote_checkpoint": wrote_checkpoint,
        "hit": fast.hit,
        "key": fast.key,
        "max_diff_vs_eager": max_diff,
        "start_to_weights_ready_s": round(weights_ready - start, 3),
        "weights_to_first_output_s": round(first_output - weights_ready, 3),
        "start_to_first_output_s": round(first_output - start, 3),
        "preload": None
        if job is None
        else {
            "state": job.state,
            "prefetched": job.prefetched,
            "deserialized": job.deserialized,
            "error": job.error,
            "timings": {k: round(v, 3) for k, v in job.timings.items()},
        },
        "timings": {k: round(v, 3) for k, v in fast.timings.items()},
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{'hit' if fast.hit else 'miss (compiled)'}: weights ready after {report['start_to_weights_ready_s']} s, "
            f"first output {report['weights_to_first_output_s']} s later; max |logits - eager| {max_diff:.1e}"
        )
        if job is not None:
            print(f"  preload {job.state}, prefetched {job.prefetched or 'nothing'}, loaded ahead {job.deserialized}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["max_diff_vs_eager"] <= 1e-4 else 1)
