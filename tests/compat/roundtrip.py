"""Save or load round-trip jobs in THIS process; the tests and tools/compat_matrix.py run it twice per batch.

    python tests/compat/roundtrip.py save DIR PATH/CASE/VARIANT ...
    python tests/compat/roundtrip.py load DIR PATH/CASE/VARIANT ...

A job is ``PATH/CASE/VARIANT``: CASE from roundtrip_cases.CASES; VARIANT ``all``, ``none`` or ``-FIX_ID`` (every
fix but that one). ``save`` makes exactly the variant's fixes active (``torchkiln.apply_fixes([...])``, ``revert``
for the rest), compiles the case and writes it under DIR; ``load`` (a fresh process: the builtins bug does not
show in the process that compiled) loads it with NO fix applied, since the fixes repair what torch saves, and
compares the result with eager; the exception is a fix that repairs the load itself (``Fix.repairs_load``:
``import-source-reload``), which a raw load applies when its variant has it, as torchkiln's load path does.
``raw`` uses torch's API directly (``torch.compile(fn, fullgraph=True).aot_compile(((x,), {}))``,
``save_compiled_function``, ``torch.compiler.load_compiled_function(f, f_globals=...)``); ``kiln`` goes through
``torchkiln.compile(target, inputs, cache=...)`` (the load is ``strict=True``: a failed load raises instead of
recompiling). Several jobs share a process because each process pays ~5 s for ``import torch``,
a few seconds of probes and ~20 s for its first Inductor compile on 2 busy cores; save and load never share one.
A raw load also reports ``missing``: where the loaded guard state holds torch's pruning marker ``_Missing``.
A raw ``-FIX`` job whose fix is not needed on the running torch applies the very fixes of an earlier job of its case
(``all``, or another such ``-FIX``): it is not compiled again but takes that job's artifact (``same_as``), and its
load runs as its own. The last stdout line is ``ROUNDTRIP {json}``; a failing job is a result, not a crash (exit 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import roundtrip_cases as cases
import torch

import torchkiln
from torchkiln import _entry, compat

MARKER = "ROUNDTRIP "


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:600] if text else type(exc).__name__


def _raw_save(case: cases.Case, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Path) -> Any:
    from torch._dynamo.guards import CheckFunctionManager

    from torchkiln.compiler import _SerializableGuardFilter

    options: dict[str, Any] = {}
    fn = target
    if case.module:
        # A module goes through torchkiln's module-level entry (a decorated forward cannot be pickled).
        fn, args = _entry.call_module, (target, *args)
    if case.module or case.torchkiln_filter:
        # The guard filter torchkiln uses: transformers models (and torch.func's transforms) carry guards torch's
        # serializer rejects.
        options["guard_filter_fn"] = _SerializableGuardFilter(
            frozenset(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
        )
    with compat.compile_scope():  # enters enable-aot-compile's scope only if that fix was applied
        wrapper: Any = torch.compile(fn, fullgraph=True, backend=case.backend, options=options or None)
        compiled = wrapper.aot_compile((args, kwargs))
    compiled.save_compiled_function(str(out / "compiled.bin"))
    return compiled(*args, **kwargs)


def _raw_load(
    case: cases.Case, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Path, *, report: dict[str, Any]
) -> Any:
    f_globals = vars(_entry) if case.module else vars(cases)
    with open(out / "compiled.bin", "rb") as handle:
        compiled = torch.compiler.load_compiled_function(handle, f_globals=f_globals)
    report["missing"] = missing_in_guard_state(compiled._artifacts.guards_state)
    return compiled(*((target, *args) if case.module else args), **kwargs)


def missing_in_guard_state(guards_state: bytes) -> list[str]:
    """Where the saved guard state holds torch's pruning marker ``_Missing``, as attribute paths.

    nn.Module internals (``_forward_hooks`` and the other ``_``-prefixed dicts torch prunes on purpose) are left
    out; what remains is an attribute of the model or a field of the guard state itself.
    """
    from torch._dynamo.guards import _Missing
    from torch._dynamo.package import load_guards_state

    found: list[str] = []
    seen: set[int] = set()

    def walk(value: Any, path: str, depth: int) -> None:
        if isinstance(value, _Missing):  # one memoized marker object: check before the seen-set
            if not path.rsplit(".", 1)[-1].startswith("_"):
                found.append(path)
            return
        if id(value) in seen or depth > 12 or isinstance(value, (torch.Tensor, str, bytes, int, float, type)):
            return
        seen.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}[{key!r}]", depth + 1)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]", depth + 1)
        elif hasattr(value, "__dict__") and type(value).__module__ != "builtins":
            for name, item in vars(value).items():
                walk(item, f"{path}.{name}", depth + 1)

    walk(load_guards_state(guards_state), "state", 0)
    return found


def parse_job(job: str) -> tuple[str, cases.Case, str]:
    """``PATH/CASE/VARIANT`` -> (path, case, variant); VARIANT is ``all``, ``none`` or ``-FIX_ID`` (all but one)."""
    path, name, variant = job.split("/", 2)
    if path not in ("raw", "kiln") or name not in cases.CASES:
        raise SystemExit(f"bad job {job!r}: PATH is raw or kiln, CASE one of {sorted(cases.CASES)}")
    known = [fix.id for fix in compat.fixes()]
    if variant not in ("all", "none") and variant.removeprefix("-") not in known:
        raise SystemExit(f"bad variant in {job!r}: all, none or -FIX_ID with FIX_ID one of {known}")
    if path == "kiln" and variant != "all":
        raise SystemExit(f"bad job {job!r}: torchkiln.compile applies every needed fix, so kiln jobs are */all")
    return path, cases.CASES[name], variant


def _set_fixes(variant: str, *, only_load: bool = False) -> list[str]:
    """Make exactly the variant's fixes active (revert the others); returns the ids now applied. ``only_load``:
    of the variant's fixes, only those that repair a load (``Fix.repairs_load``)."""
    wanted = {fix.id for fix in compat.fixes() if fix.repairs_load or not only_load}
    if variant == "none":
        wanted = set()
    elif variant.startswith("-"):
        wanted.discard(variant[1:])
    for fix in compat.fixes():
        if fix.id not in wanted and fix.is_applied():
            fix.revert()
    statuses = torchkiln.apply_fixes(sorted(wanted)) if wanted else []
    return [s.id for s in statuses if s.state is compat.FixState.APPLIED]


def _job_dir(root: Path, job: str) -> Path:
    return root / job.replace("/", "_")


CompiledBy = dict[tuple[str, str, tuple[str, ...]], str]


def run_job(phase: str, job: str, root: Path, compiled_by: CompiledBy) -> dict[str, Any]:
    """``compiled_by``: (path, case, fixes applied) -> the raw job of this save process that compiled it."""
    import torch._dynamo.config as dynamo_config

    path, case, variant = parse_job(job)
    out = _job_dir(root, job)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {"job": job, "phase": phase}
    # Loads apply no fix (but the load-repairing ones): the fixes repair what torch saves, and a fresh process must
    # load the bytes as they are.
    # A kiln job starts with every fix reverted: torchkiln.compile must apply what it needs by itself.
    report["applied"] = _set_fixes("none" if path == "kiln" else variant) if phase == "save" else []
    if phase == "load" and path == "raw":
        report["applied"] = _set_fixes(variant, only_load=True)
    saved = out / "save.json"
    if phase == "load" and saved.is_file() and not json.loads(saved.read_text())["ok"]:
        return {**report, "ok": False, "skipped": True, "error": "nothing to load: the save failed"}
    same = (path, case.name, tuple(sorted(report["applied"])))
    if phase == "save" and path == "raw" and same in compiled_by:
        # `-FIX` where that fix is not needed on this torch applies exactly the fixes of an earlier job of this
        # case: the same compile, so its artifact is that job's (the load still runs, with this job's load fixes).
        first = json.loads(_job_dir(root, compiled_by[same]).joinpath("save.json").read_text())
        report.update(ok=first["ok"], error=first["error"], same_as=compiled_by[same], seconds=0.0)
        report["aot_flag_after"] = bool(getattr(dynamo_config, "enable_aot_compile", False))
        saved.write_text(json.dumps(report))
        return report
    if phase == "load" and saved.is_file() and json.loads(saved.read_text()).get("same_as"):
        report["same_as"] = json.loads(saved.read_text())["same_as"]
        out = _job_dir(root, report["same_as"])
    target, args = case.make()
    with torch.no_grad():
        expected = target(*args, **case.kwargs())
        try:
            if path == "raw" and phase == "save":
                result = _raw_save(case, target, args, case.kwargs(), out)
            elif path == "raw":
                result = _raw_load(case, target, args, case.kwargs(), out, report=report)
            else:
                cache = out / "cache"
                compiled = torchkiln.compile(
                    target,
                    args,
                    example_kwargs=case.kwargs(),
                    cache=cache,
                    backend=case.backend,
                    strict=phase == "load",
                )
                report["hit"] = compiled.hit
                # recorded in the artifact
                report["fixes_applied"] = list(compiled.header.fixes_applied) if compiled.header else None
                result = compiled(*args, **case.kwargs())
        except Exception as exc:
            report.update(ok=False, error=_error(exc), traceback=traceback.format_exc(limit=-6))
        else:
            correct = cases.same(result, expected)
            report.update(ok=correct, error=None if correct else "wrong result")
    report["aot_flag_after"] = bool(getattr(dynamo_config, "enable_aot_compile", False))
    report["seconds"] = round(time.perf_counter() - start, 2)
    if phase == "save":
        saved.write_text(json.dumps(report))
        if path == "raw":
            compiled_by.setdefault(same, job)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("save", "load"))
    parser.add_argument("dir", type=Path)
    parser.add_argument("jobs", nargs="+", metavar="PATH/CASE/VARIANT")
    ns = parser.parse_args(argv)
    import torch._dynamo.config as dynamo_config

    # What the running torch is and which fixes it needs, before this process changes anything.
    header: dict[str, Any] = {"torch": torch.__version__, "phase": ns.phase}
    header["aot_flag"] = bool(getattr(dynamo_config, "enable_aot_compile", False))
    if ns.phase == "save":
        header["fixes"] = [status.to_dict() for status in torchkiln.fixes()]
    compiled_by: CompiledBy = {}
    reports = [run_job(ns.phase, job, ns.dir, compiled_by) for job in ns.jobs]
    # enable-aot-compile is scoped: after every compile above, the flag and a plain torch.compile are untouched.
    header["aot_flag_after"] = bool(getattr(dynamo_config, "enable_aot_compile", False))
    header["aot_attr_after"] = hasattr(torch.compile(cases.plus_one, fullgraph=True), "aot_compile")
    sys.stdout.write(MARKER + json.dumps({"header": header, "jobs": reports}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
