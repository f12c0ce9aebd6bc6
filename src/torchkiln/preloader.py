"""``torchkiln.preload()``: start, on one background thread, everything a hit needs that does not need the model.

An inference server spends its first seconds building the model and reading its weights; a torchkiln hit then
spends most of its own time importing torch's compiler stack (``torch._dynamo``, ``torch._inductor``, Triton), which
needs no model at all. ``preload()``, called at the top of the program, does that work meanwhile::

    import torch, torchkiln
    torchkiln.preload(name="my-llm")           # returns at once; the imports etc. run on a thread
    model = build_model(); model.load_state_dict(safetensors.torch.load_file("weights.safetensors"))
    compiled = torchkiln.compile(model, example_inputs, name="my-llm")   # joins the thread first

The thread, in order:

1. **Imports, under CPython's import lock** (import_lock.py: while the thread holds it, a thread that imports a
   module not yet in ``sys.modules`` waits, so no module is ever imported by two threads at once; the naive
   version, imports sprinkled on a thread, fails with ``_DeadlockError: deadlock detected by
   _ModuleLock('torch._dynamo')`` or ``cannot import name 'IndentedBuffer' from partially initialized module
   'torch._inductor.utils'``). ``preload()`` returns once the thread holds it, taken at a moment no other thread
   but the caller is inside an import (for at most 30 s; then all the work stays with ``compile``); the thread
   imports torchkiln's load path, the store backend and the modules a hit imports (in the designed order of
   ``inductor_cache.warm_imports``) and applies the install memo and the load's fixes. Modules already imported
   stay usable on every thread; weights I/O and tensor work run in parallel. Deadlock-free because the thread never
   waits for another thread while it holds the lock (nothing it imports waits for CUDA's initialization lock:
   checked with a mocked CUDA on torch 2.11).
2. **The artifact, without the lock**, when preload can know which one: the exact ``key`` (a ``CompiledModule.key``
   kept from an earlier run), a ``name`` (the ``name=`` the program passes to ``compile``: every stored key of that
   name, at most :data:`MAX_CANDIDATES`), or the ``target`` and ``example_inputs`` themselves. Each is read from the
   store, verified (lengths, sha256, HMAC with ``TORCHKILN_SIGNING_KEY``) and decoded, and its kernels are restored
   into the Inductor cache; ``loader.load`` then skips those steps for those exact bytes.
3. **Torch's deserialization of the first fitting module artifact, under the import lock again**
   (load_ahead.py, which says when it is left to ``compile``: function artifacts, a CUDA artifact before the
   program initialized CUDA, ...): unpickling, the guard manager, the generated code and its kernels. The lock is
   taken, as in phase 1, at a moment no other thread is inside an import, this time the caller's included (it runs
   freely by now). ``loader.load`` then only checks the header against the call and wraps the function.

``torchkiln.compile`` joins the thread before it touches torch internals: it waits for phase 1 whatever happens
(it would wait for the import lock anyway) and for the rest at most ``join_timeout`` seconds; past that it warns
(``TorchkilnWarning``), forgets whatever the thread still brings and loads on its own, as without preload, unless
phase 3 is loading: that local work is waited for (compile's own load would race it). A failure in
the thread is never raised: it is recorded (``Preload.error``, logged at INFO) and the compile does the work
itself, which reports the real error where it happens.

Probe: phases 1 and 3 run on the thread only where CPython's import lock can be held (import_lock.py); elsewhere
``preload()`` only starts phase 2 and the imports happen in ``compile``, on the caller's thread (the plain path).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from torchkiln import cuda_warm, gc_pause, import_lock
from torchkiln.errors import warn

__all__ = ["DEFAULT_JOIN_TIMEOUT", "MAX_CANDIDATES", "Preload", "current", "join_before_compile", "preload"]

log = logging.getLogger("torchkiln.preload")

#: Seconds ``compile`` waits for the artifact phase (reading a remote store) before it goes on without it.
DEFAULT_JOIN_TIMEOUT = 60.0
#: At most this many stored artifacts are prepared for a ``name`` (the most recently used first).
MAX_CANDIDATES = 4
_IMPORT_PHASE_LIMIT = 600.0  # phase 1 (and a phase-3 load) waited for longer than this is reported as a hang
#: How long the thread waits for a moment when no other thread imports before it gives up on phase 1 (or 3).
_START_LIMIT = 30.0


class Preload:
    """One background preload: its state, what it did, and how long each step took (``timings``, seconds).

    ``state``: ``running``, ``done``, ``failed`` (``error`` says why; compile does the work itself) or
    ``abandoned`` (compile stopped waiting after ``join_timeout``). ``prefetched``: the store keys prepared for
    ``loader.load``; ``deserialized``: the one of them torch deserialized ahead (phase 3), or None.
    ``imports``: what phase 1 imported (``inductor_cache.WarmReport``), or None. ``background_imports``: False where
    the interpreter has no import lock to hold (phases 1 and 3 then run in compile).
    """

    def __init__(
        self, *, join_timeout: float, background_imports: bool, deserialize: bool = True, grad_enabled: bool = True
    ) -> None:
        self.state = "running"
        self.device: str | None = None
        self.error: str | None = None
        self.timings: dict[str, float] = {}
        self.prefetched: list[str] = []
        self.deserialized: str | None = None
        self.deserialize = deserialize
        self.grad_enabled = grad_enabled  # the caller's grad mode (thread-local), for phase 3
        self.imports: Any = None
        self.join_timeout = join_timeout
        self.background_imports = background_imports
        self._thread: threading.Thread | None = None
        self._imports_done = threading.Event()
        self._joined = threading.Event()
        self._holds_import_lock = False
        self._loading_ahead = False  # phase 3 is past its last chance to be abandoned
        self._abandoned = False
        self._offer_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Preload(state={self.state!r}, device={self.device!r}, deserialized={self.deserialized!r})"

    @property
    def holds_import_lock(self) -> bool:
        """The thread holds the import lock now (phase 1, or phase 3's deserialization)."""
        return self._holds_import_lock

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread (phase 1 always, then at most ``timeout`` s more); True when it has finished."""
        if self._thread is None or self._thread is threading.current_thread():
            return True
        self._joined.set()  # phase 3 stops waiting for a device
        if not self._imports_done.wait(_IMPORT_PHASE_LIMIT):
            log.warning("torchkiln.preload: the imports did not finish in %.0f s", _IMPORT_PHASE_LIMIT)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def abandon(self) -> bool:
        """Forget what the thread still brings: nothing it prepares from now on reaches a load. False (nothing
        abandoned) while phase 3 loads: compile's own load would race it (Inductor's settings are process-wide)."""
        from torchkiln import loader

        with self._offer_lock:
            if self._loading_ahead:
                return False
            self._abandoned = True
            if self.state == "running":
                self.state = "abandoned"
            loader.withdraw()
        return True

    # -- the thread ---------------------------------------------------------------------------------------------
    def start(self, lock: import_lock.ImportLock | None, work: _Work) -> None:
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(lock, started, work, threading.get_ident()),
            name="torchkiln-preload",
            daemon=False,  # never killed while it holds the import lock; it ends on its own
        )
        self._thread.start()
        started.wait()  # the thread holds the import lock: from here on no other thread starts an import

    def _run(self, lock: import_lock.ImportLock | None, started: threading.Event, work: _Work, caller: int) -> None:
        t0 = time.perf_counter()
        try:
            # The caller of ``preload`` is excluded: it waits for this thread and imports nothing meanwhile (a
            # module it is importing itself is never one preload imports).
            if lock is not None and not import_lock.hold_when_no_import_runs(lock, {caller}, _START_LIMIT):
                log.info("torchkiln.preload: other threads kept importing; the work stays with compile")
                self.background_imports = False
                lock = None
                work.keys = work.name = None  # phase 2 would import on this thread, without the lock
            self.timings["lock_wait"] = time.perf_counter() - t0
            if lock is not None:
                self._holds_import_lock = True
                try:
                    started.set()
                    with gc_pause.paused():  # the load path's imports (gc_pause.py); not while it waits below
                        self._phase_imports(work)
                finally:
                    # before the release: a thread the lock let through sees both
                    self._holds_import_lock = False
                    self._imports_done.set()
                    lock[1]()
            started.set()
            self._imports_done.set()
            self.timings["imports_phase"] = time.perf_counter() - t0
            if work.keys is not None or work.name is not None:
                prepared = self._phase_artifacts(work)
                if lock is not None and self.deserialize and prepared:
                    self._phase_deserialize(lock, prepared)
            if self.state == "running":
                self.state = "done"
        except Exception as exc:  # noqa: BLE001 - never raised: compile does the work itself and reports it there
            self.error = f"{type(exc).__name__}: {exc}"[:500]
            self.state = "failed"
            log.info("torchkiln.preload failed (compile will do the work itself): %s", self.error)
        finally:
            started.set()
            self._imports_done.set()
            self.timings["total"] = time.perf_counter() - t0

    def _phase_imports(self, work: _Work) -> None:
        """Phase 1 (import lock held): the store backend, the hit's torch imports, the install memo, the load fixes."""
        start = time.perf_counter()
        import codecs

        import torch

        from torchkiln import inductor_cache, load_ahead, loader  # noqa: F401 - load_ahead: phases 2 and 3

        codecs.lookup("cp437")  # zipfile's default name encoding (the kernel bundle): its module, imported now

        if work.store is None:
            work.store = _open(work.config, work.cache)
        self.timings["store_open"] = time.perf_counter() - start
        device = work.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = device
        cuda_warm.start(device)  # where the program has initialized CUDA already; else phase 3 starts it
        self.imports = inductor_cache.warm_imports(device)
        self.timings["torch_imports"] = self.imports.seconds
        # The install memo and the load's forward fixes, before phase 2 picks the CPU ISA
        start = time.perf_counter()
        loader.prepare_load(device)
        inductor_cache.save_templates()  # the templates its imports compiled, for the next process (template_memo.py)
        self.timings["prepare_load"] = time.perf_counter() - start

    def _phase_artifacts(self, work: _Work) -> list[tuple[str, Any]]:
        """Phase 2 (no lock): read, verify and decode the candidates, restore their kernels, offer them to loader;
        returns what it offered (store key, ``loader.Prefetched``), most recently used first."""
        from torchkiln import load_ahead, loader

        offered: list[tuple[str, Any]] = []
        start = time.perf_counter()
        if work.store is None:
            work.store = _open(work.config, work.cache)
        for store_key in _candidates(work.store, work.keys, work.name):
            if self._abandoned:
                return offered
            data = load_ahead.timed(self.timings, "store_get", work.store.get, store_key)
            if data is None:
                continue
            prefetched = load_ahead.prepare(
                data,
                store_key,
                signing_key=work.config.signing_key,
                settle_isa=self.background_imports,
                abandoned=lambda: self._abandoned,
                timings=self.timings,
            )
            if prefetched is None:
                continue
            with self._offer_lock:
                if self._abandoned:
                    return offered
                loader.offer(store_key, prefetched)
                self.prefetched.append(store_key)
                offered.append((store_key, prefetched))
        self.timings["artifacts_phase"] = time.perf_counter() - start
        return offered

    def _phase_deserialize(self, lock: import_lock.ImportLock, prepared: list[tuple[str, Any]]) -> None:
        """Phase 3: torch's deserialization of the first fitting module candidate, under the import lock."""
        from torchkiln import load_ahead, loader

        start = time.perf_counter()
        candidates = load_ahead.loadable_ahead(prepared)
        if not candidates or self._abandoned:
            return
        if not load_ahead.wait_for_device(candidates[0][1].header.device_type, self._joined):
            log.info("torchkiln.preload: the load is left to compile (the device is not ready)")
            return
        self.timings["device_wait"] = time.perf_counter() - start
        cuda_warm.start(candidates[0][1].header.device_type)  # on its own thread, beside the load (cuda_warm.py)
        # The caller runs freely by now: it is not excluded (it could be inside an import the load needs).
        if not import_lock.hold_when_no_import_runs(lock, set(), _START_LIMIT):
            log.info("torchkiln.preload: other threads kept importing; the load is left to compile")
            return
        self._holds_import_lock = True
        try:
            with self._offer_lock:  # from here on compile waits for this phase instead of abandoning it
                if self._abandoned:
                    return
                self._loading_ahead = True
            chosen = load_ahead.first_fitting(candidates)
            if chosen is not None:
                with gc_pause.paused():
                    loaded = load_ahead.deserialize(chosen[1], grad_enabled=self.grad_enabled, timings=self.timings)
                loader.offer(chosen[0], loaded)
                self.deserialized = chosen[0]
        except Exception as exc:  # noqa: BLE001 - compile loads it again and reports the real error there
            log.info("torchkiln.preload: could not load ahead (compile will): %s: %s", type(exc).__name__, exc)
        finally:
            self._loading_ahead = False
            self._holds_import_lock = False
            lock[1]()


@dataclasses.dataclass
class _Work:
    config: Any  # settings.Settings
    cache: Any
    store: Any  # opened by the caller where no import lock is held, else by phase 1
    keys: list[str] | None
    name: str | None
    device: str | None


_current: Preload | None = None
_current_lock = threading.Lock()


def current() -> Preload | None:
    """The preload of this process (the latest one started), or None."""
    return _current


def preload(
    target: Any = None,
    example_inputs: Any = None,
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    cache: str | os.PathLike[str] | Any = None,
    name: str | None = None,
    key: str | None = None,
    device: str | None = None,
    dynamic: bool = False,
    backend: str = "inductor",
    options: Mapping[str, Any] | None = None,
    join_timeout: float = DEFAULT_JOIN_TIMEOUT,
    deserialize: bool = True,
) -> Preload:
    """Start the background preload of a hit (see the module docstring); returns once it is safe to go on.

    ``cache``: as for ``compile`` (a path, URL or Store; default ``$TORCHKILN_CACHE`` or the user cache dir).
    Which artifact to prepare: ``key`` (exact), else the ``target`` and ``example_inputs`` (with the same
    ``example_kwargs``, ``name``, ``dynamic``, ``backend`` and ``options`` as the coming ``compile``), else every
    stored key named ``name``; with none of them only the imports and the install memo. A ``target``'s key is
    computed now, in the torch state of this moment (grad mode, default dtype, threads are part of it): call
    ``preload`` under the same ``torch.no_grad()`` etc. as the ``compile`` it prepares. ``device`` (``"cpu"``,
    ``"cuda"``, ...) picks the imports (Triton for a GPU); default: the target's or inputs' device, else ``"cuda"``
    when ``torch.cuda.is_available()``. ``deserialize=False`` leaves torch's deserialization (phase 3) to
    ``compile``. A second call while one runs returns the running one.
    """
    global _current
    from torchkiln import request, settings

    with _current_lock:
        if _current is not None and _current.state == "running":
            return _current
        lock = import_lock.import_lock()
        torch = sys.modules.get("torch")  # thread-local grad mode: phase 3 runs in the caller's
        grad = True if torch is None else bool(torch.is_grad_enabled())
        job = Preload(
            join_timeout=join_timeout, background_imports=lock is not None, deserialize=deserialize, grad_enabled=grad
        )
        _current = job
    keys: list[str] | None = None
    if key is not None:
        keys = [key]
    elif target is not None:
        computed = request.request_key(
            target, example_inputs, example_kwargs, name=name, dynamic=dynamic, backend=backend, options=options
        )
        keys = [computed.key]
        device = device or request.request_fingerprint(target, example_inputs, example_kwargs).device_type
    config = settings.current()
    # Without an import lock to hold, everything that imports runs here, on the caller's thread.
    store = None if lock is not None else _open(config, cache)
    job.start(lock, _Work(config, cache, store, keys, name, device))
    return job


def _open(config: Any, cache: Any) -> Any:
    from torchkiln.store import Store, open_store

    if isinstance(cache, Store):
        return cache
    return open_store(config.cache if cache is None else cache)


def _candidates(store: Any, keys: list[str] | None, name: str | None) -> list[str]:
    if keys is not None:
        found = list(keys)
        for key in keys:
            found += store.variants(key)
        return found[:MAX_CANDIDATES]
    from torchkiln.store.base import KEY_RE

    prefix = f"{name}-"
    entries = [e for e in store.list() if e.key.startswith(prefix) and KEY_RE.fullmatch(e.key)]
    entries.sort(key=lambda e: -e.last_used)
    return [e.key for e in entries[:MAX_CANDIDATES]]


def join_before_compile() -> Preload | None:
    """What ``torchkiln.compile`` calls first: wait for this process's preload (see the module docstring)."""
    job = _current
    if job is None:
        return None
    start = time.perf_counter()
    if not job.join(job.join_timeout):
        if job.abandon():
            warn(
                f"torchkiln.preload did not finish reading the artifact within {job.join_timeout:g} s; "
                "compile reads and loads it itself (pass a larger join_timeout= to preload to wait longer)"
            )
        else:
            job.join(_IMPORT_PHASE_LIMIT)  # phase 3 is loading: local work, never abandoned halfway
    job.timings["join_wait"] = job.timings.get("join_wait", 0.0) + time.perf_counter() - start
    if job.error:
        log.info("torchkiln.preload failed earlier (%s); compile does its work itself", job.error)
    return job
