"""``torchkiln.preload()``: start, on one background thread, everything a hit needs that does not need the model.

An inference server spends its first seconds building the model and reading its weights; a torchkiln hit then
spends most of its own time importing torch's compiler stack (``torch._dynamo``, ``torch._inductor``, Triton), which
needs no model at all. ``preload()``, called at the top of the program, does that work meanwhile::

    import torch, torchkiln
    torchkiln.preload(name="my-llm")           # returns at once; the imports etc. run on a thread
    model = build_model(); model.load_state_dict(safetensors.torch.load_file("weights.safetensors"))
    compiled = torchkiln.compile(model, example_inputs, name="my-llm")   # joins the thread first

The thread, in order:

1. **Imports, under the interpreter's import lock.** ``preload()`` returns only once the thread holds
   ``_imp.acquire_lock()`` (CPython's lock for import hooks, re-entrant for its holder), and the thread keeps it
   while it imports torchkiln's load path, the store backend and the modules a hit imports (in the designed order
   of ``inductor_cache.warm_imports``). Meanwhile another thread that imports a module not yet in ``sys.modules``
   waits for the lock before it takes that module's own lock, so no module is ever imported by two threads at once
   (the naive version, imports sprinkled on a thread, fails with ``_DeadlockError: deadlock detected by
   _ModuleLock('torch._dynamo')`` or ``cannot import name 'IndentedBuffer' from partially initialized module
   'torch._inductor.utils'``). Modules already imported stay usable on every thread; weights I/O and tensor work
   run in parallel. Deadlock-free because the thread never waits for another thread while it holds the lock: it
   takes the lock only at a moment no other thread is inside an import (it reads the owners of importlib's module
   locks with the lock held and retries while there are any, the caller of ``preload`` aside, for at most 30 s;
   then it leaves all the work to ``compile``), ``preload()`` returns only after the thread holds the lock, and
   nothing it imports waits for CUDA's initialization lock (checked with a mocked CUDA on torch 2.11). The
   install memo (``torch_key``, and ``triton_key`` for a GPU) is applied in this phase too.
2. **The artifact, without the lock**, when preload can know which one: the exact ``key`` (a ``CompiledModule.key``
   kept from an earlier run), a ``name`` (the ``name=`` the program passes to ``compile``: every stored key of that
   name, at most :data:`MAX_CANDIDATES`), or the ``target`` and ``example_inputs`` themselves. Each is read from the
   store, verified (lengths, sha256, HMAC with ``TORCHKILN_SIGNING_KEY``) and decoded, and its kernels are restored
   into the Inductor cache; ``loader.load`` then skips those steps for those exact bytes. Torch's own
   deserialization stays on the caller's thread, inside ``compile``: it imports what the particular artifact names
   (the generated code, the model's classes), which only the caller's thread may do safely.

``torchkiln.compile`` joins the thread before it touches torch internals: it waits for phase 1 whatever happens
(it would wait for the import lock anyway) and for phase 2 at most ``join_timeout`` seconds; past that it warns
(``TorchkilnWarning``), forgets whatever phase 2 still brings and loads on its own, as without preload. A failure in
the thread is never raised: it is recorded (``Preload.error``, logged at INFO) and the compile does the work
itself, which reports the real error where it happens.

Probe: phase 1 runs on the thread only where ``_imp.acquire_lock``/``release_lock`` exist (CPython 3.11-3.14,
whose ``importlib._bootstrap._get_module_lock`` takes that lock); elsewhere ``preload()`` only starts phase 2 and
the imports happen in ``compile``, on the caller's thread (the plain path).
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

from torchkiln.errors import TorchkilnError, warn

__all__ = ["DEFAULT_JOIN_TIMEOUT", "MAX_CANDIDATES", "Preload", "current", "join_before_compile", "preload"]

log = logging.getLogger("torchkiln.preload")

#: Seconds ``compile`` waits for the artifact phase (reading a remote store) before it goes on without it.
DEFAULT_JOIN_TIMEOUT = 60.0
#: At most this many stored artifacts are prepared for a ``name`` (the most recently used first).
MAX_CANDIDATES = 4
#: Phase 1 waits are bounded too: imports that take longer than this are reported as a hang, never waited forever.
_IMPORT_PHASE_LIMIT = 600.0
#: How long the thread waits for a moment when no other thread is inside an import before it gives up on phase 1.
_START_LIMIT = 30.0


class Preload:
    """One background preload: its state, what it did, and how long each step took (``timings``, seconds).

    ``state``: ``running``, ``done``, ``failed`` (``error`` says why; compile does the work itself) or
    ``abandoned`` (compile stopped waiting after ``join_timeout``). ``prefetched``: the store keys prepared for
    ``loader.load``. ``imports``: what phase 1 imported (``inductor_cache.WarmReport``), or None.
    ``background_imports``: False where the interpreter has no import lock to hold (phase 1 then runs in compile).
    """

    def __init__(self, *, join_timeout: float, background_imports: bool) -> None:
        self.state = "running"
        self.device: str | None = None
        self.error: str | None = None
        self.timings: dict[str, float] = {}
        self.prefetched: list[str] = []
        self.imports: Any = None
        self.join_timeout = join_timeout
        self.background_imports = background_imports
        self._thread: threading.Thread | None = None
        self._imports_done = threading.Event()
        self._abandoned = False
        self._offer_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Preload(state={self.state!r}, device={self.device!r}, prefetched={self.prefetched!r})"

    @property
    def imports_finished(self) -> bool:
        """Phase 1 is over (the import lock is released, or was never held)."""
        return self._imports_done.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread (phase 1 always, then at most ``timeout`` s more); True when it has finished."""
        if self._thread is None or self._thread is threading.current_thread():
            return True
        if not self._imports_done.wait(_IMPORT_PHASE_LIMIT):
            log.warning("torchkiln.preload: the imports did not finish in %.0f s", _IMPORT_PHASE_LIMIT)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def abandon(self) -> None:
        """Forget what the thread still brings: nothing it prepares from now on reaches a load."""
        from torchkiln import loader

        with self._offer_lock:
            self._abandoned = True
            if self.state == "running":
                self.state = "abandoned"
            loader.withdraw()

    # -- the thread ---------------------------------------------------------------------------------------------
    def start(self, lock: tuple[Any, Any] | None, work: _Work) -> None:
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(lock, started, work, threading.get_ident()),
            name="torchkiln-preload",
            daemon=False,  # never killed while it holds the import lock; it ends on its own
        )
        self._thread.start()
        started.wait()  # the thread holds the import lock: from here on no other thread starts an import

    def _run(self, lock: tuple[Any, Any] | None, started: threading.Event, work: _Work, caller: int) -> None:
        t0 = time.perf_counter()
        try:
            if lock is not None and not _hold_when_no_import_runs(lock, caller):
                log.info("torchkiln.preload: other threads kept importing; the work stays with compile")
                self.background_imports = False
                lock = None
                work.keys = work.name = None  # phase 2 would import on this thread, without the lock
            self.timings["lock_wait"] = time.perf_counter() - t0
            if lock is not None:
                try:
                    started.set()
                    self._phase_imports(work)
                finally:
                    self._imports_done.set()  # before the release: a thread the lock let through sees it set
                    lock[1]()
            started.set()
            self._imports_done.set()
            self.timings["imports_phase"] = time.perf_counter() - t0
            if work.keys is not None or work.name is not None:
                self._phase_artifacts(work)
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

        from torchkiln import inductor_cache, loader

        codecs.lookup("cp437")  # zipfile's default name encoding (the kernel bundle): its module, imported now

        if work.store is None:
            work.store = _open(work.config, work.cache)
        self.timings["store_open"] = time.perf_counter() - start
        device = work.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = device
        self.imports = inductor_cache.warm_imports(device)
        self.timings["torch_imports"] = self.imports.seconds
        # The install memo and the load's forward fixes, before phase 2 picks the CPU ISA
        start = time.perf_counter()
        loader.prepare_load(device)
        self.timings["prepare_load"] = time.perf_counter() - start

    def _phase_artifacts(self, work: _Work) -> None:
        """Phase 2 (no lock): read, verify and decode the candidates, restore their kernels, offer them to loader."""
        from torchkiln import artifact, inductor_cache, kernels, loader
        from torchkiln.header import ArtifactHeader

        start = time.perf_counter()
        if work.store is None:
            work.store = _open(work.config, work.cache)
        for store_key in _candidates(work.store, work.keys, work.name):
            if self._abandoned:
                return
            data = _timed(self.timings, "store_get", work.store.get, store_key)
            if data is None:
                continue
            t = time.perf_counter()
            try:
                decoded = artifact.decode(data, signing_key=work.config.signing_key, where=store_key)
                header = ArtifactHeader.from_dict(decoded.header, where=store_key)
            except TorchkilnError as exc:  # corrupt, untrusted: the load says so (and misses) on its own
                log.info("torchkiln.preload: %s is not usable: %s", store_key, exc)
                continue
            finally:
                self.timings["decode"] = self.timings.get("decode", 0.0) + time.perf_counter() - t
            restored = None
            if "kernels" in decoded.sections and not self._abandoned:
                try:
                    restored = _timed(self.timings, "restore_kernels", kernels.restore, decoded.sections["kernels"])
                except OSError as exc:
                    log.info("torchkiln.preload: could not restore the kernels of %s: %s", store_key, exc)
            if restored is not None and header.device_type == "cpu" and self.background_imports and not self._abandoned:
                # Inductor's CPU ISA, picked now as the load would (its probes spawn one process each)
                _timed(self.timings, "settle_isa", inductor_cache.settle_isa, restored)
            with self._offer_lock:
                if self._abandoned:
                    return
                loader.offer(store_key, loader.Prefetched(data, decoded, header, work.config.signing_key, restored))
                self.prefetched.append(store_key)
        self.timings["artifacts_phase"] = time.perf_counter() - start


@dataclasses.dataclass
class _Work:
    config: Any  # settings.Settings
    cache: Any
    store: Any  # opened by the caller where no import lock is held, else by phase 1
    keys: list[str] | None
    name: str | None
    device: str | None


def _importing_threads(exclude: set[int]) -> set[int]:
    """Threads (other than ``exclude``) inside an import right now: the owners of importlib's module locks.

    Read with the import lock held, so no module lock is created meanwhile. importlib's own bookkeeping
    (``_bootstrap._module_locks``: name -> weakref to a ``_ModuleLock`` whose ``owner`` is the importing thread's
    id, None when free; CPython 3.11-3.14); where it looks otherwise, nothing is reported (the documented rule,
    call preload between statements, is what remains)."""
    from importlib import _bootstrap

    locks = getattr(_bootstrap, "_module_locks", None)
    if not isinstance(locks, dict):
        return set()
    owners = set()
    for ref in list(locks.values()):
        lock = ref() if callable(ref) else None
        owner = getattr(lock, "owner", None)
        if isinstance(owner, int) and owner not in exclude:
            owners.add(owner)
    return owners


def _hold_when_no_import_runs(lock: tuple[Any, Any], caller: int, limit: float = _START_LIMIT) -> bool:
    """Take the import lock at a moment no other thread is inside an import (one could hold a module lock the
    preload thread will need, and wait for the import lock: a deadlock). The caller of ``preload`` is excluded:
    it waits for this thread and imports nothing meanwhile (a module it is importing itself is never one preload
    imports). False when other threads kept importing for ``limit`` seconds (then the lock is not held)."""
    me = threading.get_ident()
    deadline = time.monotonic() + limit
    while True:
        lock[0]()
        if not _importing_threads({me, caller}):
            return True
        lock[1]()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)


def _timed(timings: dict[str, float], step: str, fn: Any, *args: Any) -> Any:
    start = time.perf_counter()
    try:
        return fn(*args)
    finally:
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - start


_current: Preload | None = None
_current_lock = threading.Lock()


def current() -> Preload | None:
    """The preload of this process (the latest one started), or None."""
    return _current


def _import_lock() -> tuple[Any, Any] | None:
    """CPython's import lock (acquire, release), where this interpreter has it; else None (the plain path)."""
    import _imp

    acquire, release = getattr(_imp, "acquire_lock", None), getattr(_imp, "release_lock", None)
    if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 14):
        return None
    if not (callable(acquire) and callable(release)):
        return None
    return acquire, release


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
) -> Preload:
    """Start the background preload of a hit (see the module docstring); returns once it is safe to go on.

    ``cache``: as for ``compile`` (a path, URL or Store; default ``$TORCHKILN_CACHE`` or the user cache dir).
    Which artifact to prepare: ``key`` (exact), else the ``target`` and ``example_inputs`` (with the same
    ``example_kwargs``, ``name``, ``dynamic``, ``backend`` and ``options`` as the coming ``compile``), else every
    stored key named ``name``; with none of them only the imports and the install memo. A ``target``'s key is
    computed now, in the torch state of this moment (grad mode, default dtype, threads are part of it): call
    ``preload`` under the same ``torch.no_grad()`` etc. as the ``compile`` it prepares. ``device`` (``"cpu"``,
    ``"cuda"``, ...) picks the imports (Triton for a GPU); default: the target's or inputs' device, else ``"cuda"``
    when ``torch.cuda.is_available()``. A second call while one runs returns the running one.
    """
    global _current
    from torchkiln import request, settings

    with _current_lock:
        if _current is not None and _current.state == "running":
            return _current
        lock = _import_lock()
        job = Preload(join_timeout=join_timeout, background_imports=lock is not None)
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
        job.abandon()
        warn(
            f"torchkiln.preload did not finish reading the artifact within {job.join_timeout:g} s; "
            "compile reads and loads it itself (pass a larger join_timeout= to preload to wait longer)"
        )
    job.timings["join_wait"] = job.timings.get("join_wait", 0.0) + time.perf_counter() - start
    if job.error:
        log.info("torchkiln.preload failed earlier (%s); compile does its work itself", job.error)
    return job
