"""The work ``torchkiln.preload`` does ahead for one stored artifact, before compile asks for it.

Preload's thread (preloader.py) owns the threading, the import lock and the states; this module owns what is done
for an artifact: :func:`prepare` (phase 2: read, verify, decode, restore the kernels, settle the CPU ISA) and
:func:`deserialize` (phase 3: torch's deserialization), both handed to ``loader.load`` as a ``loader.Prefetched``
that it uses only for the very same bytes and signing key.

Phase 3 is possible because what torch's load of a *module* artifact needs is the artifact and torchkiln's entry
module (its ``f_globals``, ``frames.loader_globals``), not the model: the preload thread can unpickle it, rebuild
its guard manager and import its generated code and kernels while the program is still building the model and
reading its weights; ``loader.load`` then checks the header against the real call (as for any load) and wraps the
function. On a GPU hit that is most of what is left once the imports are done (the H200 GPT-2 run of 2026-12-02:
0.96 s of 1.24 s from weights-ready). The rules (each a reason to leave the load to ``compile``, which then loads
exactly as without preload):

* **Module artifacts only.** A function artifact loads against a *copy* of its module's globals taken at load
  (``frames.loader_globals``): taken now, it could be stale by the time compile runs.
* **Only a candidate that fits this process** (``loader.check_header`` without a call: fingerprint, the inlined
  sources on disk, the re-checks on globals); compile repeats every check, with the call, before it uses the
  function.
* **Under the import lock**, taken at a moment no other thread (the program's included) is inside an import: the
  load imports what the artifact names (the generated code, the model's classes), and no module may be imported by
  two threads at once (import_lock.py).
* **In the grad mode the program called preload in** (thread-local; the key is computed in it too).
* **A CUDA artifact only once the program has initialized CUDA and sees one device.** The load puts the kernels
  on the GPU. Initializing CUDA from this thread could deadlock with the program's own initialization (torch's
  ``_lazy_init`` holds its lock while it runs Python, which may import; this thread would wait for that lock while
  holding the import lock), and would pick the device before the program does. Until then the thread waits,
  holding nothing, for CUDA, for compile (which then loads itself) or for the program's end. Other GPU types: not
  ahead.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from torchkiln import artifact, compiler, inductor_cache, kernels, loader
from torchkiln.errors import TorchkilnError
from torchkiln.fingerprint import Fingerprint
from torchkiln.header import ArtifactHeader

__all__ = ["Candidate", "deserialize", "first_fitting", "loadable_ahead", "prepare", "timed", "wait_for_device"]

log = logging.getLogger("torchkiln.preload")

#: A store key and what preload prepared for it.
Candidate = tuple[str, loader.Prefetched]
#: The longest the thread waits for the program to initialize CUDA before it leaves the load to compile.
DEVICE_WAIT_LIMIT = 600.0


def prepare(
    data: bytes,
    store_key: str,
    *,
    signing_key: bytes | None,
    settle_isa: bool,
    abandoned: Callable[[], bool],
    timings: dict[str, float],
) -> loader.Prefetched | None:
    """Phase 2 for one artifact's bytes: verify and decode them (nothing is unpickled), restore their kernels into
    the Inductor cache and, for a CPU artifact with ``settle_isa``, let Inductor pick its vector ISA as the load
    would (its probes spawn one process each). None when the bytes are not usable (the load says so on its own)."""
    try:
        decoded, header = timed(timings, "decode", _decode, data, store_key, signing_key)
    except TorchkilnError as exc:  # corrupt, untrusted: the load says so (and misses) on its own
        log.info("torchkiln.preload: %s is not usable: %s", store_key, exc)
        return None
    restored = None
    if "kernels" in decoded.sections and not abandoned():
        try:
            restored = timed(timings, "restore_kernels", kernels.restore, decoded.sections["kernels"])
        except OSError as exc:
            log.info("torchkiln.preload: could not restore the kernels of %s: %s", store_key, exc)
    if restored is not None and header.device_type == "cpu" and settle_isa and not abandoned():
        timed(timings, "settle_isa", inductor_cache.settle_isa, restored)
    return loader.Prefetched(data, decoded, header, signing_key, restored)


def _decode(data: bytes, store_key: str, signing_key: bytes | None) -> tuple[artifact.Artifact, ArtifactHeader]:
    decoded = artifact.decode(data, signing_key=signing_key, where=store_key)
    return decoded, ArtifactHeader.from_dict(decoded.header, where=store_key)


def timed(timings: dict[str, float], step: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, its seconds added to ``timings[step]`` (raised or not): preload's step timings."""
    start = time.perf_counter()
    try:
        return fn(*args)
    finally:
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - start


def wait_for_device(device_type: str | None, stop: threading.Event, limit: float = DEVICE_WAIT_LIMIT) -> bool:
    """True once a ``device_type`` artifact may be loaded on this thread (see the module docstring); False when
    ``stop`` is set (compile arrived), the main thread ended, ``limit`` passed, or the device type is not handled."""
    if device_type in (None, "cpu"):
        return True
    if device_type != "cuda":
        return False
    import torch

    deadline = time.monotonic() + limit
    while not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        if stop.wait(0.005) or not threading.main_thread().is_alive() or time.monotonic() > deadline:
            return False
    return bool(torch.cuda.device_count() == 1)


def loadable_ahead(prepared: Sequence[Candidate]) -> list[Candidate]:
    """The module candidates for the device of the first (most recently used) one, in order."""
    modules = [c for c in prepared if c[1].header.is_module]
    return [c for c in modules if c[1].header.device_type == modules[0][1].header.device_type] if modules else []


def first_fitting(candidates: Sequence[Candidate]) -> Candidate | None:
    """The first candidate whose header fits this process (the device is ready: ``wait_for_device``), or None."""
    for store_key, prefetched in candidates:
        header = prefetched.header
        try:
            loader.check_header(
                header,
                key=header.key,
                store_key=store_key,
                fingerprint=Fingerprint.current(header.device_type or "cpu"),
                target=None,
                is_module=True,
            )
        except TorchkilnError as exc:  # another variant, another environment: compile decides with the call
            log.info("torchkiln.preload: %s is not loaded ahead: %s", store_key, exc)
            continue
        return store_key, prefetched
    return None


def deserialize(prefetched: loader.Prefetched, *, grad_enabled: bool, timings: dict[str, float]) -> loader.Prefetched:
    """Phase 3: torch's deserialization of a fitting module candidate (the caller holds the import lock), as
    ``loader.load`` would run it; returns ``prefetched`` with the function it then only wraps."""
    function = timed(timings, "deserialize", _deserialize, prefetched, grad_enabled)
    return dataclasses.replace(prefetched, function=function)


def _deserialize(prefetched: loader.Prefetched, grad_enabled: bool) -> Any:
    import torch

    # Idempotent (phase 1 ran it for its device guess); before kernels.loading settles the CPU ISA, as loader.load.
    loader.prepare_load(prefetched.header.device_type)
    with torch.set_grad_enabled(grad_enabled), kernels.loading(prefetched.restored):
        return compiler.deserialize(prefetched.decoded.sections["payload"], is_module=True, target=None)
