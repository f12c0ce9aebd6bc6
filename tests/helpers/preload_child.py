"""A fresh process that preloads, then does what a program does meanwhile, then compiles: for tests/test_preload.py.

Run as ``python tests/helpers/preload_child.py CONFIG_JSON``. Config: ``target`` / ``inputs`` (``module:attr``
factories, as for child.py; with ``"function": true`` the target is the function itself), ``cache``, ``name``,
and optional ``preload`` (keyword arguments of ``torchkiln.preload``; ``"target": true`` passes the built target
and inputs), ``collide`` (default true: right after ``preload()`` returns, this thread and two more import the very
modules the preload thread imports, the collision that makes a naive background import fail with
``_DeadlockError`` or a partially-initialized-module ImportError), ``join_timeout``, ``store_delay`` (seconds each
read of the preload's store takes: a slow remote store), ``mode`` (compile's). The model and, unless preload needs
them, the inputs are built after ``preload()`` (a CUDA model initializes CUDA then, as in a server).

An audit hook records every module body that runs (the ``exec`` event of its code) with the thread that ran it and
whether the preload thread held the import lock then. Prints ``TKPRELOAD <json>``: ``hit``, ``max_diff`` against
eager, ``errors`` (every exception any thread raised), the preload's ``state``/``error``/``prefetched``/
``deserialized``/``timings``, the compile's ``compile_timings``, ``late_imports`` (modules the preload thread ran
without the lock), ``imports_by_others_during`` (modules other threads ran while the preload thread held the lock:
must be none) and the torchkiln warnings.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
import warnings
from typing import Any

import torch

import torchkiln
from torchkiln.store import open_store

COLLIDE = (
    ("torch._inductor.utils", "torch._dynamo", "torch._inductor.lowering"),
    ("torch._dynamo.symbolic_convert", "torch._inductor.codecache", "sympy"),
    ("torch._inductor.select_algorithm", "torch._functorch._aot_autograd.autograd_cache", "networkx"),
)


class _SlowStore:
    """A store whose reads take ``delay`` seconds (everything else passes through)."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner, self.delay, self.url = inner, delay, inner.url

    def get(self, key: str) -> bytes | None:
        time.sleep(self.delay)
        data: bytes | None = self.inner.get(key)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes) -> bool:
        return bool(self.inner.put(key, data))

    def delete(self, key: str) -> bool:
        return bool(self.inner.delete(key))

    def list(self) -> Any:
        return self.inner.list()

    def variants(self, key: str) -> Any:
        return self.inner.variants(key)

    def lock(self, key: str, timeout: float) -> Any:
        return self.inner.lock(key, timeout)

    def gc(self, max_size: int) -> Any:
        return self.inner.gc(max_size)


def _resolve(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    events: list[tuple[str, str, bool]] = []
    job_box: list[Any] = []

    def audit(event: str, args: tuple[Any, ...]) -> None:
        # "exec" of a module's code: the module body runs (after the import machinery's locks), not merely asked for;
        # an eval/exec of a string ("<string>": a guard re-check, a dataclass's generated methods) is no import
        code = args[0] if event == "exec" and args else None
        if job_box and getattr(code, "co_name", None) == "<module>" and not code.co_filename.startswith("<"):
            events.append((threading.current_thread().name, args[0].co_filename, job_box[0].holds_import_lock))

    errors: list[str] = []
    target = _resolve(config["target"])
    factory = (lambda: target) if config.get("function") else target  # ``"function": true``: the target itself
    make_inputs = _resolve(config["inputs"])
    inputs = None
    kwargs = dict(config.get("preload", {}))
    if kwargs.pop("target", False):
        inputs = make_inputs()
        kwargs.update(target=factory(), example_inputs=inputs)
    kwargs.setdefault("cache", config["cache"])
    if config.get("store_delay"):
        kwargs["cache"] = _SlowStore(open_store(kwargs["cache"]), float(config["store_delay"]))
    if "join_timeout" in config:
        kwargs["join_timeout"] = config["join_timeout"]
    sys.addaudithook(audit)
    start = time.perf_counter()
    with torch.no_grad():  # the context compile runs in below: grad mode is part of the key
        job = torchkiln.preload(**kwargs)
    job_box.append(job)
    preload_call = time.perf_counter() - start

    def importer(names: tuple[str, ...]) -> None:
        try:
            for name in names:
                importlib.import_module(name)
            from torch._inductor.utils import IndentedBuffer  # the naive attempt's ImportError

            assert IndentedBuffer is not None
        except BaseException as exc:
            errors.append(f"{threading.current_thread().name}: {type(exc).__name__}: {exc}")

    threads = []
    if config.get("collide", True):
        threads = [
            threading.Thread(target=importer, args=(names,), name=f"other-{i}") for i, names in enumerate(COLLIDE[1:])
        ]
        for thread in threads:
            thread.start()
        importer(COLLIDE[0])
    model = factory()  # a CUDA model initializes CUDA here, after preload, as in a server
    inputs = make_inputs() if inputs is None else inputs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.no_grad():
                compiled = torchkiln.compile(
                    model, inputs, cache=config["cache"], name=config.get("name"), mode=config.get("mode")
                )
                out = compiled(*inputs)
                want = model(*inputs)
            max_diff = float((out - want).abs().max())
            hit = compiled.hit
            compile_timings = dict(compiled.timings)
        except BaseException as exc:
            errors.append(f"compile: {type(exc).__name__}: {exc}")
            max_diff, hit, compile_timings = float("inf"), False, {}
    for thread in threads:
        thread.join()
    own = "torchkiln-preload"
    result = {
        "hit": hit,
        "max_diff": max_diff,
        "errors": errors,
        "state": job.state,
        "error": job.error,
        "device": job.device,
        "background_imports": job.background_imports,
        "prefetched": job.prefetched,
        "timings": job.timings,
        "preload_call_s": preload_call,
        "import_failures": list(job.imports.failed) if job.imports is not None else None,
        "deserialized": job.deserialized,
        "compile_timings": compile_timings,
        "late_imports": sorted({m for t, m, held in events if t == own and not held}),
        "imports_by_others_during": sorted({m for t, m, held in events if t != own and held}),
        "warnings": [str(w.message) for w in caught if "torchkiln" in str(w.message)],
    }
    sys.stdout.write("TKPRELOAD " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
