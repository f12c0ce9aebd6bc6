"""Whether a verified artifact's header fits this process, decided before anything is unpickled.

One rule, used by the load path (api.py) and by ``torchkiln explain`` alike, so that explain predicts exactly what
the next call does: the header must name the requested key, its fingerprint must be compatible, every source range
Dynamo inlined must be unchanged on disk, and every re-checked guard on a module global must hold here (evaluated
against the globals a load would give torch, without unpickling anything). An artifact that fails only the CPU
extension list, the sources or a re-check is another *variant* of its key (``StaleArtifactError``); one built for
another key or another environment is ``IncompatibleArtifactError``. What remains after a fit is decided at the
first call: torch's kept guards and the re-checks on the call's arguments.

:func:`load` is the load path itself (bytes -> callable: verify, fit, restore the kernels, torch's load), and
:func:`prepare_load` what a process needs before torch reads any artifact (the install memo, the load's forward
fixes), which ``preload`` also runs ahead on its thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from torchkiln import (
    artifact,
    compat,
    compiler,
    cuda_warm,
    frames,
    gc_pause,
    guard_fates,
    inductor_cache,
    kernels,
    sources,
)
from torchkiln.errors import IncompatibleArtifactError, StaleArtifactError, TorchkilnError
from torchkiln.fingerprint import Fingerprint
from torchkiln.header import ArtifactHeader

__all__ = ["Prefetched", "check_header", "load", "offer", "prepare_load", "withdraw"]

log = logging.getLogger("torchkiln")


@dataclasses.dataclass(frozen=True)
class Prefetched:
    """What ``torchkiln.preload`` did ahead of a load for one stored artifact: read (``data``), verified and decoded
    it (``decoded``, ``header``; with ``signing_key``), restored its kernels (``restored``, None when it had none or
    they could not be written), and for the one it could load ahead (load_ahead.py) torch's deserialized
    ``function`` (else None)."""

    data: bytes
    decoded: artifact.Artifact
    header: ArtifactHeader
    signing_key: bytes | None
    restored: kernels.RestoreReport | None
    function: Any = None


#: store key -> what preload prepared for it; each entry is used (popped) by the first load of those exact bytes.
_prefetched: dict[str, Prefetched] = {}
_prefetched_lock = threading.Lock()


def offer(store_key: str, prefetched: Prefetched) -> None:
    """Hand :func:`load` the work preload did for ``store_key`` (used only for the very same bytes and key)."""
    with _prefetched_lock:
        _prefetched[store_key] = prefetched


def withdraw() -> None:
    """Forget everything offered and not used yet (a preload that was abandoned or replaced)."""
    with _prefetched_lock:
        _prefetched.clear()


def _take(store_key: str, data: bytes, signing_key: bytes | None) -> Prefetched | None:
    with _prefetched_lock:
        found = _prefetched.pop(store_key, None)
    if found is None or found.signing_key != signing_key or (found.data is not data and found.data != data):
        return None  # nothing prepared, or prepared for other bytes (the store changed) or another signing key
    return found


def check_header(
    header: ArtifactHeader,
    *,
    key: str,
    store_key: str,
    fingerprint: Fingerprint,
    target: Any,
    is_module: bool,
    call: tuple[Sequence[Any], Mapping[str, Any]] | None = None,
) -> guard_fates.Rechecker:
    """Raise ``StaleArtifactError`` (another variant) or ``IncompatibleArtifactError`` unless the header fits.

    With ``call`` (the positional and keyword inputs), the re-checks on the call's arguments are evaluated too, on
    the frame locals the compiled entry would see; without it only those on module globals are. Returns the
    header's re-checks, parsed once: the loaded function runs them at each call.
    """
    if header.key != key:
        raise IncompatibleArtifactError(
            f"the artifact stored under {store_key} was built for {header.key}",
            where=store_key,
            fix="delete it with `torchkiln rm KEY`; `torchkiln explain` shows what differs",
        )
    built_for = header.fingerprint
    if fingerprint.key_fields() == built_for.key_fields() and fingerprint.incompatibilities(built_for):
        # Only the CPU extension list can differ under one key (fingerprint.key_fields): another CPU's variant.
        raise StaleArtifactError(
            "; ".join(fingerprint.incompatibilities(built_for)),
            where=store_key,
            fix="nothing to do: torchkiln looks for the variant built for this CPU, or compiles it",
        )
    fingerprint.check_compatible(built_for, where=store_key)
    changed = sources.inlined_sources_changed(header.inlined_sources)
    if changed:
        raise StaleArtifactError(
            f"source changed since the artifact was built: {', '.join(changed[:5])}",
            where=store_key,
            fix="nothing to do: torchkiln looks for the variant built from these sources, or compiles it",
        )
    rechecker = guard_fates.Rechecker.of(header.guards, header.guard_globals)
    f_locals = None if call is None else frames.frame_locals(target, is_module, *call)
    scope = "global" if f_locals is None else None
    mismatches = rechecker.mismatches(frames.portable_globals(target, is_module), f_locals, scope=scope)
    if mismatches:
        raise StaleArtifactError(
            f"{len(mismatches)} value(s) the graph was specialized on differ here: " + "; ".join(mismatches[:3]),
            where=store_key,
            fix="nothing to do: torchkiln looks for the variant built for these values, or compiles it",
        )
    return rechecker


def prepare_load(device_type: str | None) -> None:
    """What a process needs before torch reads an artifact for ``device_type``; idempotent, and cheap once done.

    :func:`load` calls it before the kernels' scope settles the CPU ISA; ``preload`` on its thread for its device
    guess (phase 1) and again for the artifact it loads ahead (phase 3). A compile applies every fix itself
    (``compiler.compile_target``).
    """
    # Before torch imports its kernel modules (the generated code's `select_algorithm` import): each builds its
    # Jinja templates at import, from the memo instead (inductor_cache/template_memo.py).
    inductor_cache.memoize_templates()
    gpu = device_type != "cpu"
    if gpu:
        # A GPU hit keys every Triton kernel it loads with torch_key() and triton_key(): from the install memo,
        # neither torch nor Triton hashes its own sources. A CPU hit calls neither (benchmarks/results/
        # cpu-profile-hit-*.txt, cpu211-profile-hit-*.txt): no memo check there.
        inductor_cache.prime_torch_key()
        inductor_cache.prime_triton_key()
    # The fixes for bugs in how torch reads back what it saved (the compile path applied all of them already);
    # after the memo, since the Triton-kernel fixes' probes read torch_key(), and before the ISA is picked, since
    # isa-probe-without-import changes how Inductor checks it.
    compat.apply_load_fixes(triton=gpu)


@gc_pause.paused()
def load(
    data: bytes,
    *,
    key: str,
    store_key: str,
    fingerprint: Fingerprint,
    target: Any,
    is_module: bool,
    call: tuple[Sequence[Any], Mapping[str, Any]] | None,
    timings: dict[str, float],
    signing_key: bytes | None,
) -> tuple[compiler.LoadedFunction, ArtifactHeader]:
    """Stored bytes -> (callable, header): verify (before any unpickling), check the fit, restore the kernels, load.

    Raises the typed errors only (corrupt, untrusted, incompatible, stale = another variant); never warns: the
    caller (api.py) owns the warn-or-raise policy. The garbage collector is paused throughout (gc_pause.py): the
    first load of a process imports torch's compiler stack.
    """
    start = time.perf_counter()
    prefetched = _take(store_key, data, signing_key)
    if prefetched is None:
        decoded = artifact.decode(data, signing_key=signing_key, where=store_key)
        header = ArtifactHeader.from_dict(decoded.header, where=store_key)
    else:  # verified and decoded by preload (the same bytes, the same signing key)
        decoded, header = prefetched.decoded, prefetched.header
    rechecker = check_header(
        header,
        key=key,
        store_key=store_key,
        fingerprint=fingerprint,
        target=target,
        is_module=is_module,
        call=call,
    )
    timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - start
    # cuBLAS's start on another thread, meanwhile, on the device of the call's inputs (cuda_warm.py)
    cuda_warm.start(header.device_type, call)
    start = time.perf_counter()
    report = None if prefetched is None else prefetched.restored
    if report is None and "kernels" in decoded.sections:
        try:
            report = kernels.restore(decoded.sections["kernels"])
        except OSError as exc:
            # An unwritable Inductor cache costs speed (kernels are rebuilt at load), not correctness.
            log.warning("could not restore the kernels of %s into the Inductor cache: %s", key, exc)
    timings["restore_kernels"] = timings.get("restore_kernels", 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    try:
        if prefetched is not None and prefetched.function is not None and is_module:
            # torch's deserialization ran on the preload thread (load_ahead.py), from these very bytes
            function = compiler.loaded(prefetched.function, rechecker)
        else:
            prepare_load(header.device_type)  # before kernels.loading settles the CPU ISA
            with kernels.loading(report):
                function = compiler.load(
                    decoded.sections["payload"], is_module=is_module, target=target, rechecker=rechecker
                )
    except StaleArtifactError as exc:
        exc.where = store_key
        raise
    except Exception as exc:
        raise load_error(exc, store_key, target) from exc
    finally:
        inductor_cache.save_templates()  # the templates this load compiled, for the next process (once per install)
    timings["load"] = timings.get("load", 0.0) + time.perf_counter() - start
    return function, header


def load_error(exc: BaseException, key: str, target: Any) -> TorchkilnError:
    """Explain why torch could not load an intact artifact, with the fix for the cases we know."""
    message = f"{type(exc).__name__}: {exc}"
    if "__main__" in message:
        return IncompatibleArtifactError(
            f"the artifact refers to an object defined in __main__ of the script that compiled it ({message[:300]})",
            where=key,
            fix="a class or function defined in the script you run (module __main__) does not exist under that "
            "name in another script: move the model code into an importable module (e.g. mymodel.py) and import "
            f"it from both scripts (target: {type(target).__qualname__})",
        )
    return IncompatibleArtifactError(
        f"torch could not load the artifact: {message[:500]}",
        where=key,
        fix="it is recompiled automatically; if this repeats, report it with `torchkiln doctor --json`",
    )
