"""The one retry of an aot_compile: ``dynamic=True`` fails on a Dynamo restart that only torch.compile performs.

Symptom (torch 2.11 and 2.13 on CPU, checked here): ``torchkiln.compile(llama, (ids,), dynamic=True)`` on a tiny
transformers Llama or Qwen2 raises ``CompileError: torch could not compile LlamaForCausalLM fullgraph:
TensorifyScalarRestartAnalysis`` (torch's exception carries no message). Plain ``torch.compile(dynamic=True)``
compiles the same model.

Cause: with ``dynamic=True`` Dynamo traces Python floats as symbolic inputs (``torch._dynamo.config.specialize_float``
is False). The tensorify pass (``torch.fx.passes._tensorify_python_scalars``), run when the captured graph is
compiled, turns those floats into tensors; for one it cannot turn (it was specialized already during tracing) it
records the float's name in ``TensorifyState`` and raises ``torch._dynamo.exc.TensorifyScalarRestartAnalysis`` to
make Dynamo trace again with that float constant. ``convert_frame`` (torch.compile) catches it and restarts;
``aot_compile_fullgraph`` captures once, then compiles, and lets it escape.

Retry: exactly when torch raised that exception, the running torch is in ``AFFECTED`` and has
``torch._dynamo.config.specialize_float``, the aot_compile runs once more inside
``torch._dynamo.config.patch(specialize_float=True)``: every Python float is traced as a constant and guarded by
value (torch.compile's restart specializes only the floats the pass named; this specializes all of them; float
*inputs* are in torchkiln's cache key by value already). The failure itself is the probe: no retry runs on a torch
that compiles, nothing is patched outside that one call, and a torch without these names gets torch's error as it
was. ``compiler.compile_target`` logs the retry and records it in ``CompileResult.retried``. ``probe()`` reproduces
the failure for real on a tiny function (sdpa with a float ``scale``, ``aot_eager``) for the tests.

The failed attempt leaves the float's name in torch's process-wide ``TensorifyState`` (torch clears it only on
``torch._dynamo.reset()``), where it would specialize a float of that name in every later compile of the process;
``preserved_tensorify_state`` puts the state back around torchkiln's attempts and the probe.

Upstream: no report of aot_compile dropping this restart found (searched the pytorch issues); the restart itself
came with pytorch#140346 ("Restart dynamo analysis when we fail to tensorify away all symfloat inputs").
Affected: torch >=2.10.dev0 (no upper bound until aot_compile restarts by itself). Touches:
``torch._dynamo.exc.TensorifyScalarRestartAnalysis`` (matched), ``torch._dynamo.config.specialize_float``
(patched for the retry only), ``torch._dynamo.symbolic_convert.TensorifyState.force_specializations`` (restored).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln.compat.versions import in_range

__all__ = ["AFFECTED", "NAME", "preserved_tensorify_state", "probe", "retry_scope"]

AFFECTED = SpecifierSet(">=2.10.dev0")
#: what CompileResult.retried and the log say
NAME = "specialize_float"


def _restart_type() -> type[BaseException] | None:
    try:
        from torch._dynamo import exc
    except ImportError:
        return None
    found = getattr(exc, "TensorifyScalarRestartAnalysis", None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _tensorify_state() -> Any:
    try:
        from torch._dynamo import symbolic_convert
    except ImportError:
        return None
    state = getattr(symbolic_convert, "TensorifyState", None)
    return state if isinstance(getattr(state, "force_specializations", None), set) else None


@contextlib.contextmanager
def preserved_tensorify_state() -> Iterator[None]:
    """Leave torch's process-wide ``TensorifyState`` as it was before the block.

    The pass records the name of the float it wants specialized (``zf0``) there before it raises; torch keeps it
    until ``torch._dynamo.reset()``, so after a failed aot_compile every later compile in the process would
    specialize whichever float gets that name. Around torchkiln's attempts (and the probe), it is put back.
    """
    state = _tensorify_state()
    before = set(state.force_specializations) if state is not None else set()
    try:
        yield
    finally:
        if state is not None:
            state.force_specializations.clear()
            state.force_specializations.update(before)


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _probe_function(x: Any, scale: float) -> Any:
    import torch

    # sdpa's ``scale`` is parsed as a plain float: the symbolic float is specialized during tracing, and the
    # tensorify pass then asks for a restart.
    return torch.nn.functional.scaled_dot_product_attention(x, x, x, scale=scale)


def probe() -> bool:
    """Does the running torch's aot_compile give up on the restart? Traced for real (``aot_eager``, nothing saved,
    about a second on CPU): tests and ``doctor`` read it; ``retry_scope`` needs no probe, the failure is its own."""
    import torch

    kind = _restart_type()
    x = torch.randn(1, 2, 4, 8)
    try:
        import torch._dynamo.config as dynamo_config

        with (
            preserved_tensorify_state(),
            dynamo_config.patch(enable_aot_compile=True),
        ):  # 2.10/2.11 attach .aot_compile only with the flag set
            wrapper: Any = torch.compile(_probe_function, fullgraph=True, dynamic=True, backend="aot_eager")
            wrapper.aot_compile(((x, 0.5), {}))
    except Exception as exc:
        if kind is not None and _caused_by(exc, kind):
            return True
        raise
    return False


def retry_scope(error: BaseException) -> contextlib.AbstractContextManager[Any] | None:
    """The scope to run aot_compile once more in after it raised ``error``; ``None``: no retry, raise it."""
    if not in_range(AFFECTED):
        return None
    kind = _restart_type()
    if kind is None or not _caused_by(error, kind):
        return None
    try:
        import torch._dynamo.config as dynamo_config
    except ImportError:
        return None
    if getattr(dynamo_config, "specialize_float", True):  # absent, or the user's own setting already: no retry
        return None
    scope: contextlib.AbstractContextManager[Any] = dynamo_config.patch(specialize_float=True)
    return scope
