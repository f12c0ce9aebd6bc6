"""Live probes: run Dynamo's graph capture on a tiny function and read the runtime environment torch would save.

Every fix's probe exercises the running torch for real instead of inferring the bug from the version: it captures
a probe function with ``torch._dynamo.convert_frame.fullgraph_capture`` (Dynamo only, no backend compile, about
a second on CPU) and asks ``GraphCaptureOutput.get_runtime_env()`` which global names the saved bytecode loads
(``external_refs``) but the saved environment does not carry (``used_globals`` / ``import_sources``). Exactly
those names make a load in a fresh process fail with ``Missing required external references``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["unsaved_runtime_refs"]

#: The compiled graph's own global; torch supplies it at load (``forward_callable(backend_id, ...)``).
_BACKEND_ID_PREFIX = "__compiled_fn"


def unsaved_runtime_refs(fn: Callable[..., Any], args: tuple[Any, ...]) -> set[str]:
    """Names ``fn``'s saved runtime environment would need at load but does not carry."""
    from torch._dynamo import convert_frame
    from torch._dynamo.utils import get_metrics_context

    # aot_compile_fullgraph runs the capture inside a metrics context; without one Dynamo refuses to count IR nodes.
    with get_metrics_context():
        capture = convert_frame.fullgraph_capture(fn, args, {})
    env = capture.graph_capture_output.get_runtime_env()
    available = set(env.used_globals) | set(env.import_sources)
    return {ref for ref in env.external_refs if ref not in available and not ref.startswith(_BACKEND_ID_PREFIX)}
