"""One benchmark phase in one fresh process: the child side of the harness (``runner`` is the parent side).

The parent runs this file by path (``python .../bench/child.py SPEC.json``), not as ``-m torchkiln...``,
so nothing (not even the torchkiln package) is imported before the clock starts. The child then measures, in
order: ``import torch``; building the model and inputs (``setup``, the same work in every phase and
excluded from time to first output); the phase's compile or load plus its first call, synchronized
(``first_output``); a median per-call time over ``calls`` calls after a few warm-up calls; and its own peak
RSS. It writes one JSON object to the spec's ``result`` path, failures included (with the traceback), so a
phase that breaks never takes the run down with it.
"""

from __future__ import annotations

import time

# Taken first so that interpreter start-up and every import below count inside the measured window.
_T0 = time.perf_counter()
_WALL0 = time.time()

import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402  (after the clock starts, on purpose)
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

# Run by path, Python puts this file's folder first on sys.path, where models.py etc. would shadow any
# top-level module of the same name; the package is imported as torchkiln.bench instead.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

WARMUP_CALLS = 3
#: The preload scenario's phases: tk_preload_bytes is the same with ``preload(deserialize=False)``.
PRELOAD_PHASES = ("tk_preload", "tk_preload_bytes")


def _no_sync() -> None:
    """CPU work is done when the call returns; CUDA needs torch.cuda.synchronize instead."""


def _tensors(value: Any) -> list[Any]:
    """The tensors in an output (a tensor, a tuple/list, a dict or a transformers ModelOutput), in order."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _max_abs_diff(out: Any, ref: list[Any]) -> float | None:
    got = _tensors(out)
    if len(got) != len(ref):
        return float("inf")
    diffs = [(g.detach().float().cpu() - r.float()).abs().max().item() for g, r in zip(got, ref, strict=True)]
    return max(diffs) if diffs else None


class _CollectorClock:
    """The cyclic collector's pauses, from ``gc.callbacks``: where a hit's time went to the collector (docs/STARTUP.md,
    gc_pause.py). Each collection: its start, seconds, generation and the thread it ran on."""

    def __init__(self) -> None:
        self.collections: list[tuple[float, float, int, str]] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            seconds = time.perf_counter() - self._start
            self.collections.append((self._start, seconds, info["generation"], threading.current_thread().name))

    def between(self, start: float, end: float) -> tuple[float, list[list[Any]]]:
        """Seconds collected in ``[start, end)`` and the collections over 10 ms (generation, s, thread)."""
        inside = [c for c in self.collections if start <= c[0] < end]
        return sum(c[1] for c in inside), [[g, round(s, 4), t] for _, s, g, t in inside if s > 0.01]


def _prepare(
    phase: str, spec: dict[str, Any], model: Any, inputs: tuple[Any, ...]
) -> tuple[Callable[[], Any], dict[str, Any]]:
    """Compile or load for ``phase``; return a zero-argument call and facts about the artifact."""
    import torch

    from torchkiln.bench import models

    info: dict[str, Any] = {}
    artifact: str = spec.get("artifact") or ""
    if phase == "eager":
        return lambda: model(*inputs), info
    if phase in ("compile_cold", "compile_warm"):
        compiled: Callable[..., Any] = torch.compile(model, fullgraph=True)
        return lambda: compiled(*inputs), info
    if phase == "megacache":
        with open(artifact, "rb") as f:
            data = f.read()
        info["artifact_bytes"] = len(data)
        torch.compiler.load_cache_artifacts(data)
        from_mega: Callable[..., Any] = torch.compile(model, fullgraph=True)
        return lambda: from_mega(*inputs), info
    if phase == "aoti":
        info["artifact_bytes"] = Path(artifact).stat().st_size
        runner = torch._inductor.aoti_load_package(artifact)
        return lambda: runner(*inputs), info
    if phase == "aot_raw":
        info["artifact_bytes"] = Path(artifact).stat().st_size
        loaded = torch.compiler.load_compiled_function(io.BytesIO(Path(artifact).read_bytes()), f_globals=vars(models))
        return lambda: loaded(model, *inputs), info
    if phase in ("tk_miss", "tk_hit_empty", "tk_hit_no_cuts", "tk_hit_warm", *PRELOAD_PHASES):
        import torchkiln

        cm = torchkiln.compile(model, inputs, cache=spec["tk_cache"])
        info.update(artifact_bytes=cm.artifact_bytes, hit=cm.hit, key=cm.key, tk_timings=dict(cm.timings))
        job = torchkiln.preloader.current()
        if job is not None:
            info.update(preload_state=job.state, preload_timings=dict(job.timings), preload_error=job.error)
            info.update(preload_prefetched=list(job.prefetched), preload_deserialized=job.deserialized)
        return lambda: cm(*inputs), info
    raise ValueError(f"unknown phase {phase!r}")


def _save_prep(kind: str, spec: dict[str, Any], model: Any, inputs: tuple[Any, ...]) -> int:
    """Build an artifact a load phase needs (after the measured work); return its size in bytes."""
    import torch

    from torchkiln.bench import models

    path = spec["save"]
    if kind == "megacache":
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            raise RuntimeError("torch.compiler.save_cache_artifacts() returned None (nothing was recorded)")
        with open(path, "wb") as f:
            f.write(saved[0])
    elif kind == "aoti":
        exported = torch.export.export(model, inputs)
        torch._inductor.aoti_compile_and_package(exported, package_path=path)
    elif kind == "aot_raw":
        # torch 2.11 ships aot_compile behind this flag (2.13 has it on by default): what a user sets too.
        torch._dynamo.config.enable_aot_compile = True
        # aot_compile is set on the wrapper at run time; typing does not know it.
        # A plain module-level function that calls the module: a decorated forward (transformers') cannot be
        # pickled by reference, and the module stays an argument, so its weights stay out of the artifact.
        wrapper: Any = torch.compile(models.call_module, fullgraph=True)
        fn = wrapper.aot_compile(((model, *inputs), {}))
        fn.save_compiled_function(path)
    else:
        raise ValueError(f"unknown artifact kind {kind!r}")
    return Path(path).stat().st_size


def _save_weights(model: Any, path: str) -> tuple[int, str]:
    """The model's weights as a safetensors file (``save_model``: tied weights such as GPT-2's are fine), or a
    ``torch.save`` file next to it where safetensors is missing; returns its size and path."""
    try:
        from safetensors.torch import save_model
    except ImportError:
        import torch

        path = str(Path(path).with_suffix(".pt"))
        torch.save(model.state_dict(), path)
    else:
        save_model(model, path)
    return Path(path).stat().st_size, path


def _weights_reader(path: str) -> None:
    """Import what :func:`_load_weights` uses for ``path``."""
    if path.endswith(".safetensors"):
        import safetensors.torch  # noqa: F401


def _load_weights(model: Any, path: str, device: str) -> str:
    """Read the weights file into ``model`` (what an inference server does at start); returns the format."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_model

        load_model(model, path, device=device)
        return "safetensors"
    import torch

    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return "torch.save"


def _setup(spec: dict[str, Any], device: str, sync: Callable[[], None], result: dict[str, Any]) -> tuple[Any, Any]:
    """Build the model and inputs (the same work in every phase); the preload scenario first starts
    ``torchkiln.preload`` and afterwards reads the weights file, as an inference server does."""
    from torchkiln.bench.models import build_model, import_libraries

    if spec["phase"] in PRELOAD_PHASES:
        # The server pattern: the program's own imports first (the model's library, the weights reader), then
        # preload, then the model and its weights while preload's thread runs.
        import torchkiln

        import_libraries(spec["model"])
        _weights_reader(spec.get("weights") or "")
        t = time.perf_counter()
        deserialize = spec["phase"] == "tk_preload"  # tk_preload_bytes: torch's load left to compile
        torchkiln.preload(cache=spec["tk_cache"], key=spec.get("key"), device=device, deserialize=deserialize)
        result["preload_call_s"] = time.perf_counter() - t

    model, inputs = build_model(spec["model"], device)
    if spec.get("weights") and spec["phase"] != "prep":
        t = time.perf_counter()
        result["weights_format"] = _load_weights(model, spec["weights"], device)
        sync()
        result["weights_load_s"] = time.perf_counter() - t
    return model, inputs


def _compare(spec: dict[str, Any], out: Any, result: dict[str, Any]) -> None:
    """The eager phase saves the reference output; every other phase reports its distance to it."""
    import torch

    ref_path = spec.get("ref")
    if spec["phase"] == "eager" and ref_path and not Path(ref_path).exists():
        torch.save([t.detach().cpu() for t in _tensors(out)], ref_path)
    elif ref_path and Path(ref_path).exists():
        result["max_abs_diff"] = _max_abs_diff(out, torch.load(ref_path))


def run(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "phase": spec["phase"],
        "ok": False,
        "python_start_s": _WALL0 - spec["spawn_wall"],
    }
    t = time.perf_counter()
    import torch

    t_torch = time.perf_counter()
    collector = _CollectorClock()
    result.update(import_torch_s=t_torch - t, torch_version=torch.__version__, pid=os.getpid())
    if spec.get("threads"):
        # On a small shared machine, OpenMP threads that wait on a descheduled sibling make per-call times
        # jump 1000x; one thread per process keeps steady-state numbers comparable between phases.
        torch.set_num_threads(int(spec["threads"]))
    result["threads"] = torch.get_num_threads()
    device = spec["device"]
    sync: Callable[[], None] = torch.cuda.synchronize if device == "cuda" else _no_sync
    if device == "cuda":
        result["device_name"] = torch.cuda.get_device_name()

    model, inputs = _setup(spec, device, sync, result)
    t_setup = time.perf_counter()
    result["setup_s"] = t_setup - t_torch
    with torch.no_grad():
        if spec["phase"] == "prep":
            # Building an artifact for a load phase: the whole compile + save is the one number.
            if spec["prep"] == "weights":
                result["artifact_bytes"], result["saved_as"] = _save_weights(model, spec["save"])
            else:
                result["artifact_bytes"] = _save_prep(spec["prep"], spec, model, inputs)
            result["prep_s"] = time.perf_counter() - t_setup
            result["ok"] = True
            return result
        call, info = _prepare(spec["phase"], spec, model, inputs)
        t_ready = time.perf_counter()
        out = call()
        sync()
        t_first = time.perf_counter()
        result.update(info)
        result["gc_setup_s"], result["gc_setup_big"] = collector.between(t_torch, t_setup)
        result["gc_first_output_s"], result["gc_first_output_big"] = collector.between(t_setup, t_first)
        result.update(
            prepare_s=t_ready - t_setup,
            first_call_s=t_first - t_ready,
            first_output_s=t_first - t_setup,
            process_s=(t_first - _T0) + result["python_start_s"],
            rss_first_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
        _compare(spec, out, result)
        for _ in range(WARMUP_CALLS):
            call()
        sync()
        times = []
        for _ in range(spec["calls"]):
            t = time.perf_counter()
            call()
            sync()
            times.append(time.perf_counter() - t)
        result["per_call_ms"] = statistics.median(times) * 1000 if times else None
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["ok"] = True
        if spec.get("save"):
            # After every measurement above: the megacache artifact comes out of a cold compile run.
            try:
                result["saved_bytes"] = _save_prep(spec["prep"], spec, model, inputs)
            except Exception as exc:  # the measurements above stand; only the artifact is missing
                result["save_error"] = f"{type(exc).__name__}: {exc}"[:2000]
    return result


def main() -> int:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        result = run(spec)
    except BaseException as exc:  # a failed phase is a result, not a crash: report it whole
        result = {"phase": spec["phase"], "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        result["traceback"] = traceback.format_exc()[-8000:]
    result.setdefault("children_peak_rss_mb", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    tmp = spec["result"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    Path(tmp).replace(spec["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
