"""The miss: compile the target with its kernels recorded, decide whether the build may be published, encode it.

It owns what an artifact holds (the header it writes, the kernel bundle, the payload) and the rules that keep a
build out of every store: torch could not serialize it, its own guards reject the inputs it was built for, a guard
torch cannot keep has no portable re-check (unfated), or torch cannot load the bytes back. Each becomes
``Built.problem`` (a ``CompileError`` with torch's reason); api.py decides whether to warn or raise.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from torchkiln import artifact, cache_key, compiler, frames, kernels, progress, targets
from torchkiln._version import __version__
from torchkiln.errors import CompileError
from torchkiln.fingerprint import Fingerprint
from torchkiln.header import ArtifactHeader
from torchkiln.hints import hint_for

__all__ = ["Built", "build"]

log = logging.getLogger("torchkiln")


@dataclasses.dataclass
class Built:
    """A compile's outcome: ``function`` always runs; ``data`` is the artifact to publish, unless ``problem``."""

    function: compiler.LoadedFunction
    header: ArtifactHeader | None  # None when nothing could be saved
    data: bytes | None
    problem: CompileError | None = None
    problem_summary: str = ""


def build(
    target: Any,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    key: cache_key.CacheKey,
    fingerprint: Fingerprint,
    is_module: bool,
    dynamic: bool,
    backend: str,
    options: Mapping[str, Any],
    timings: dict[str, float],
    signing_key: bytes | None,
) -> Built:
    """Compile ``target`` for these inputs (``CompileError`` when torch cannot) and encode what may be published."""
    start = time.perf_counter()
    with progress.activity(f"compiling {key.key}"), kernels.recording() as recording:
        result = compiler.compile_target(
            target, args, kwargs, is_module=is_module, dynamic=dynamic, backend=backend, options=options
        )
    timings["compile"] = timings.get("compile", 0.0) + time.perf_counter() - start
    function = result.function
    full_args = frames.call_args(target, is_module, args)
    if result.payload is not None and not function.guard_check(full_args, kwargs):
        # torch's own guards reject the very inputs it compiled for: never run that graph unguarded.
        result.save_error = "its guards reject the inputs it was compiled for"
        result.payload = None
        function = compiler.LoadedFunction(
            compiler.jit_compile(target, is_module=is_module, dynamic=dynamic, backend=backend, options=options),
            jit=True,
        )
    touched = _replica_touching_distributed(key, result.guards, result.inlined_sources)
    if result.payload is not None and touched:
        result.save_error = (
            f"its trace reads torch.distributed ({touched}) but the key is a replica's, shared by every rank "
            "(Dynamo bakes the rank and process-group sizes into the graph without a guard)"
        )
        result.payload = None
    unfated = [g for g in result.guards if g.get("fate") == "unfated"]
    if result.payload is not None and unfated:
        names = ", ".join(f"{g['guard_type']} {g['name']}" for g in unfated[:5])
        result.save_error = (
            f"{len(unfated)} guard(s) torch cannot save have no portable re-check ({names}); an artifact "
            "without them could run where they do not hold"
        )
        result.payload = None
    if result.payload is None:
        problem = CompileError(
            f"torch compiled {key.key} but it cannot be saved: {result.save_error}",
            where=key.key,
            fix=hint_for(result.save_error or ""),
        )
        return Built(function, None, None, problem, "the artifact cannot be saved")
    start = time.perf_counter()
    header = ArtifactHeader(
        torchkiln_version=__version__,
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        target=targets.qualname(type(target) if is_module else target),
        is_module=is_module,
        device_type=result.device_type,
        cache_key=key,
        fingerprint=fingerprint,
        fixes_applied=tuple(result.fixes_applied),
        guards=tuple(result.guards),
        guard_globals=result.guard_globals,
        inlined_sources=tuple(result.inlined_sources),
        compile_seconds={k: round(v, 3) for k, v in result.seconds.items()},
    )
    data = artifact.encode(
        header.to_dict(),
        {"payload": result.payload, "kernels": kernels.bundle_of(recording)},
        signing_key=signing_key,
    )
    timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    reason = compiler.check_loadable(result.payload, is_module=is_module, target=target)
    timings["check_loadable"] = timings.get("check_loadable", 0.0) + time.perf_counter() - start
    if reason is not None:
        # Publishing bytes torch cannot load would make every later process warn and recompile: say it once here.
        problem = CompileError(
            f"torch compiled {key.key} but cannot load what it saved: {reason}",
            where=key.key,
            fix="`torchkiln doctor` lists the forward fixes; report it with `torchkiln doctor --json`",
        )
        return Built(function, header, None, problem, "the artifact does not load")
    return Built(function, header, data)


def _replica_touching_distributed(
    key: cache_key.CacheKey, guards: Sequence[Mapping[str, Any]], inlined: Sequence[Mapping[str, Any]]
) -> str | None:
    """What of torch.distributed the trace touched, when the key says the target reaches none of it (no rank keyed).

    describe.describe_distributed keys the rank for what it can see before tracing (process groups, meshes and
    DTensors in the module tree, torch.distributed names in the code); this is the net under it: a guard on a
    torch.distributed object, or torch.distributed code Dynamo inlined. Such a build runs but is not published.
    """
    options = key.part("options")
    distributed = options.description.get("distributed") if options and isinstance(options.description, dict) else None
    if not isinstance(distributed, dict) or "rank" in distributed:
        return None
    for record in inlined:
        if str(record.get("module", "")).startswith("torch.distributed"):
            return f"inlined {record.get('module')}"
    for guard in guards:
        check = guard.get("check")
        if isinstance(check, dict) and any("torch.distributed" in str(v) for v in check.values()):
            return f"guard on {guard.get('name')}"
    return None
