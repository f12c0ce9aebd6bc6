"""One side of a GPU round trip of torch.compile's modes, run as ``python -m tests.gpu.modes_roundtrip CACHE MODE
[MODEL [DYNAMIC [BEFORE]]]`` (MODEL ``mlp`` or ``gpt2``; DYNAMIC ``1`` compiles ``dynamic=True`` and calls two batch
sizes; BEFORE ``1`` compiles without tuning at compile time, as torchkiln did before, to measure what that costs);
prints one JSON line: hit, key, the first calls' differences from eager, and how often this process really tuned.

Inductor's own counters cannot tell: a graph loaded from a cache entry adds the counter deltas its compile recorded
(``counters["inductor"] += graph.counter_deltas`` in ``FxGraphCache``), so a hit "shows" the compile's autotuning.
The child therefore counts calls of the functions that do the benchmarking (GEMM choices at compile, a Triton
kernel's launch configs and coordinate descent at its first launch); they still run unchanged."""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import torchkiln


def build(model: str) -> tuple[nn.Module, list[torch.Tensor]]:
    """The model (float16, eval, on the GPU) and the inputs it is called with, one per batch size."""
    torch.manual_seed(0)
    gen = torch.Generator("cuda").manual_seed(1)
    if model == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(n_layer=2, n_head=4, n_embd=256, vocab_size=1024, n_positions=128, use_cache=False)
        lm = GPT2LMHeadModel(config).cuda().half().eval()
        return lm, [torch.randint(0, 1024, (b, 32), device="cuda", generator=gen) for b in (2, 3)]
    mlp = nn.Sequential(nn.Linear(512, 1024), nn.GELU(), nn.Linear(1024, 512)).cuda().half().eval()
    return mlp, [torch.randn(b, 512, device="cuda", dtype=torch.float16, generator=gen) for b in (64, 48)]


def logits(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out["logits"]  # type: ignore[index]


def tune_at_first_call_only() -> None:
    """torchkiln before it tuned at compile time: the mode's options without ``triton.autotune_at_compile_time``."""
    from torchkiln import inductor_options

    original = inductor_options.inductor_options

    def without(*args: object, **kwargs: object) -> dict[str, object]:
        options = original(*args, **kwargs)  # type: ignore[arg-type]
        options.pop(inductor_options.AUTOTUNE_AT_COMPILE_TIME, None)
        return options

    inductor_options.inductor_options = without  # type: ignore[assignment]


def count_tuning() -> tuple[dict[str, int], list[dict[str, object]]]:
    """Wrap each benchmarking entry point so that every real call is counted (the call itself is unchanged), and
    note each kernel's coordinate-descent run and each tuning result saved (where, found how)."""
    from torch._inductor import select_algorithm
    from torch._inductor.runtime import autotune_cache, coordinate_descent_tuner, triton_heuristics

    calls: dict[str, int] = {}
    details: list[dict[str, object]] = []
    for owner, name in (
        (select_algorithm.AlgorithmSelectorCache, "benchmark"),
        (triton_heuristics.CachingAutotuner, "benchmark_all_configs"),
        (coordinate_descent_tuner.CoordescTuner, "autotune"),
    ):
        original = getattr(owner, name)
        label = f"{owner.__name__}.{name}"
        calls[label] = 0

        @functools.wraps(original)  # keeps __name__: torch pickles bound methods of these classes by name
        def counted(*args: object, _original=original, _label=label, **kwargs: object) -> object:
            calls[_label] += 1
            return _original(*args, **kwargs)

        setattr(owner, name, counted)

    coordesc = triton_heuristics.CachingAutotuner.coordinate_descent_tuning

    @functools.wraps(coordesc)
    def noted_coordesc(self: object, *args: object, **kwargs: object) -> object:
        details.append(
            {
                "coordesc": getattr(self, "inductor_meta", {}).get("kernel_name"),
                "heuristic": str(getattr(self, "heuristic_type", "")),
                "configs": len(getattr(self, "configs", []) or []),
                "cache_info": dict(getattr(self, "autotune_cache_info", {}) or {}),
                "file": str(getattr(self, "filename", "")),
            }
        )
        return coordesc(self, *args, **kwargs)

    triton_heuristics.CachingAutotuner.coordinate_descent_tuning = noted_coordesc  # type: ignore[method-assign]
    save = autotune_cache.AutotuneCache.save

    @functools.wraps(save)
    def noted_save(self: object, config: object, time_taken_ns: int, found_by_coordesc: bool = False, **kw: object):
        local = getattr(self, "local_cache", None)
        details.append({"saved": local[1] if local else None, "found_by_coordesc": found_by_coordesc})
        return save(self, config, time_taken_ns, found_by_coordesc, **kw)  # type: ignore[arg-type]

    autotune_cache.AutotuneCache.save = noted_save  # type: ignore[method-assign]
    return calls, details


def main() -> None:
    from torch._dynamo.utils import counters

    cache, mode = sys.argv[1], sys.argv[2]
    model_name = sys.argv[3] if len(sys.argv) > 3 else "mlp"
    dynamic = len(sys.argv) > 4 and sys.argv[4] == "1"
    if len(sys.argv) > 5 and sys.argv[5] == "1":
        tune_at_first_call_only()
    tuning, tuning_details = count_tuning()
    model, inputs = build(model_name)
    start = time.perf_counter()
    with torch.no_grad():
        expected = [logits(model(x)) for x in inputs]
        compiled = torchkiln.compile(
            model, cache=cache, mode=None if mode == "default" else mode, dynamic=True if dynamic else None, strict=True
        )
        diffs = []
        first_output_s = None
        for x, want in zip(inputs if dynamic else inputs[:1], expected, strict=False):
            for _ in range(4):  # reduce-overhead records a CUDA graph on a later call: compare every one
                out = logits(compiled(x))
                torch.cuda.synchronize()
                first_output_s = first_output_s or round(time.perf_counter() - start, 3)
                diffs.append(float((out.float() - want.float()).abs().max()))
    record = {
        "mode": mode,
        "model": model_name,
        "dynamic": dynamic,
        "hit": compiled.hit,
        "key": compiled.key,
        "diffs": diffs,
        "first_output_s": first_output_s,
        "calls_s": round(time.perf_counter() - start, 3),
        "compile_s": round(compiled.timings.get("compile", 0.0), 3),
        "tuning_calls": tuning,
        "tuning_details": tuning_details,
        "stray_private_dirs": sorted(str(p) for p in Path(tempfile.gettempdir()).glob("torchkiln-kernels-*")),
        "best_configs": len(list(Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).rglob("*.best_config"))),
        "inductor_counters": {k: v for k, v in counters["inductor"].items() if v},
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
