"""Save or load the ported test_aot_compile.py cases in THIS process; test_aot_compile_peer.py runs it twice.

    python tests/peer/peer_roundtrip.py save DIR CASE ...
    python tests/peer/peer_roundtrip.py load DIR CASE ...

``save`` compiles each case through ``torchkiln.compile(target, args, cache=DIR/CASE)`` (a miss that publishes);
``load``, in a fresh process, asks for the same key with ``strict=True``: a load that fails raises instead of
recompiling, so a case passes only if the artifact of the other process ran. Both compare every call (the example
inputs, then the case's further calls, then gradients where the case asks) with eager. Cases share a process
because each process pays for ``import torch`` and a first Inductor compile. The last stdout line is
``PEER {json}``; a failing case is a result, not a crash (exit 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import peer_cases as cases
import torch

import torchkiln

MARKER = "PEER "


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return " ".join(text.split())[:600]


def _grads(target: Any, args: tuple[Any, ...], *, compiled: Any = None) -> list[torch.Tensor]:
    inputs = [a.detach().clone().requires_grad_() for a in args]
    out = (compiled or target)(*inputs)
    out.sum().backward()
    return [i.grad for i in inputs]


def run_case(phase: str, name: str, root: Path) -> dict[str, Any]:
    case = cases.CASES[name]
    report: dict[str, Any] = {"case": name, "phase": phase}
    start = time.perf_counter()
    try:
        other = phase == "load" and case.load_make is not None
        target, args = case.load_make() if other and case.load_make is not None else case.make()
        backend = case.backend if isinstance(case.backend, str) else case.backend()
        with case.context():
            expected = target(*args)
            compiled: Any = torchkiln.compile(
                target,
                args,
                cache=root / name,
                backend=backend,
                dynamic=case.dynamic,
                strict=phase == "load" and not other,
            )
            report["hit"] = compiled.hit
            wrong = [] if cases.same(compiled(*args), expected) else ["example inputs"]
            for index, call in enumerate(case.calls()):
                if not cases.same(compiled(*call), target(*call)):
                    wrong.append(f"call {index}")
            if case.grad and not cases.same(_grads(target, args, compiled=compiled), _grads(target, args)):
                wrong.append("gradients")
        report["published"] = compiled.artifact_bytes > 0
        if phase == "load" and not compiled.hit and not other:
            report.update(ok=False, error="not a cache hit")
        else:
            report.update(ok=not wrong, error=f"wrong result: {', '.join(wrong)}" if wrong else None)
    except Exception as exc:
        report.update(ok=False, error=_error(exc), traceback=traceback.format_exc(limit=-8))
    report["seconds"] = round(time.perf_counter() - start, 2)
    if phase == "save":
        (root / f"{name}.save.json").write_text(json.dumps(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("save", "load"))
    parser.add_argument("dir", type=Path)
    parser.add_argument("cases", nargs="+", choices=sorted(cases.CASES), metavar="CASE")
    ns = parser.parse_args(argv)
    ns.dir.mkdir(parents=True, exist_ok=True)
    header = {"torch": torch.__version__, "phase": ns.phase}
    if ns.phase == "save":
        header["fixes"] = {status.id: status.state.value for status in torchkiln.fixes()}
    reports = [run_case(ns.phase, name, ns.dir) for name in ns.cases]
    sys.stdout.write(MARKER + json.dumps({"header": header, "cases": reports}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
