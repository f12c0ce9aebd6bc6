"""The specializations of one compiled target: which one serves a call, and the hit / miss / fallback / strict policy.

Load path (hit): key -> store.get -> artifact.decode (lengths, sha256 and, with a key configured, the HMAC are
verified before anything is unpickled) -> the header must name this exact request (a validly signed artifact
copied under another key is refused) -> fingerprint compatible -> inlined sources unchanged -> kernels restored
into the Inductor cache -> compiler.load. Every failure there is a miss: a ``TorchkilnWarning`` naming the reason
and a normal compile, unless ``strict`` (or ``TORCHKILN_STRICT=1``), where the typed error is raised.

Compile path (miss): fixes applied, one compiler per key (the store's lock; waiters load what it publishes),
aot_compile inside ``kernels.recording()`` so the artifact carries its built kernels, publish write-once.

Calls: the loaded function's own guards (and torchkiln's re-checks) decide whether an input fits a specialization.
An input that fits none (another shape, dtype, device, train/eval mode, a changed attribute) is never a guard
error and never runs a graph built for something else: its own key is looked up or compiled, and kept.

``dynamic=None`` (torch's default, "automatic") maps onto the keys of ``dynamic=False`` and ``dynamic=True``:
the first shape of a *family* (the same request with every tensor size erased: same ranks, dtypes, devices,
module state) is served by its static artifact if one is stored, else by the family's dynamic artifact if one is
stored, else compiled static; a later shape of a family that already has a specialization in this process is
served by the family's dynamic artifact (loaded, or compiled), as torch's automatic dynamic shapes recompile.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torchkiln import builder, cache_key, frames, inductor_options, loader, progress, request, settings
from torchkiln.errors import CompileError, StaleArtifactError, StoreError, TorchkilnError, warn
from torchkiln.fingerprint import GPU_DEVICE_TYPES, Fingerprint
from torchkiln.specialization import TIMING_KEYS, Entry, Recipe, Specialization, family_of
from torchkiln.store import Store
from torchkiln.store.base import variant_key

__all__ = ["TIMING_KEYS", "Recipe", "Specialization", "Specializer"]

log = logging.getLogger("torchkiln")


def _initialize_lazy(module: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """A lazy module (``nn.LazyLinear``) infers its parameters from the first inputs, as OptimizedModule does
    before it compiles: the key and the graph then see real parameters."""
    if hasattr(module, "_initialize_hook") and callable(getattr(module, "_infer_parameters", None)):
        module._infer_parameters(module, tuple(args), dict(kwargs))  # noqa: SLF001 - what nn.Module's lazy-init hook itself calls


def _no_rebuild(target: Any, recipe: Recipe) -> Any:
    raise RuntimeError("this specializer was not made by torchkiln.compile, so it cannot make another one")


class Specializer:
    """The specializations of ``target`` (an nn.Module or a function), found, loaded or compiled per call."""

    def __init__(
        self, target: Any, *, is_module: bool, store: Store | None, recipe: Recipe, config: settings.Settings
    ) -> None:
        self.target = target
        self.is_module = is_module
        self.recipe = recipe
        #: ``api.rebuild``: a lazy compile of another target with this recipe (set by api.compile; see wrappers)
        self.rebuild: Callable[[Any, Recipe], Any] = _no_rebuild
        self.strict = recipe.strict or config.strict
        self._store = store
        self._settings = config
        self._entries: list[Entry] = []
        self._static_only: set[str] = set()  # families whose dynamic compile failed in this process
        self._lock = threading.RLock()
        self.last: Entry | None = None  # the specialization that served the last call (or was resolved last)

    @property
    def specializations(self) -> tuple[Specialization, ...]:
        return tuple(e.info for e in self._entries if e.info is not None)

    # -- calling ------------------------------------------------------------------------------------------------
    def _fitting(self, full_args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Entry | None:
        for entry in reversed(self._entries):
            if entry.function.guard_check(full_args, kwargs):
                return entry
        return None

    def call(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        full_args = frames.call_args(self.target, self.is_module, args)
        entry = self._fitting(full_args, kwargs)
        if entry is None:
            entry = self.resolve(args, kwargs)
        self.last = entry
        return entry.function(*full_args, **kwargs)

    # -- resolving a key ----------------------------------------------------------------------------------------
    def _key(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], *, dynamic: bool
    ) -> tuple[cache_key.CacheKey, Fingerprint]:
        return request.request_key_and_fingerprint(
            self.target,
            is_module=self.is_module,
            args=args,
            kwargs=kwargs,
            name=self.recipe.name,
            dynamic=dynamic,
            backend=self.recipe.backend,
            options=self.recipe.key_options(),
        )

    def resolve(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Entry:
        """The specialization for these inputs: one of this process's that fits (another thread may have just
        resolved it), else loaded or compiled, and kept."""
        with self._lock:
            fitting = self._fitting(frames.call_args(self.target, self.is_module, args), kwargs)
            if fitting is not None:
                self.last = fitting
                return fitting
            if self.is_module:
                _initialize_lazy(self.target, args, kwargs)
            timings = dict.fromkeys(TIMING_KEYS, 0.0)
            start = time.perf_counter()
            entry = self._resolve(args, kwargs, timings, start)
            timings["total"] = time.perf_counter() - start
            hit = entry.function.loaded
            entry.info = Specialization(entry.key, hit, entry.dynamic, entry.artifact_bytes, timings, entry.header)
            self._entries.append(entry)
            self.last = entry
            return entry

    def _resolve(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], timings: dict[str, float], start: float
    ) -> Entry:
        wanted = self.recipe.dynamic
        key, fingerprint = self._key(args, kwargs, dynamic=bool(wanted))
        if wanted is not None:
            timings["key"] = time.perf_counter() - start
            return self._load_or_compile(key, fingerprint, args, kwargs, timings, dynamic=wanted)
        family = family_of(key)
        grown = family not in self._static_only and any(
            e.family == family and e.requested != key.key for e in self._entries
        )
        dyn_key, _ = self._key(args, kwargs, dynamic=True)
        timings["key"] = time.perf_counter() - start
        if not grown:
            # The first shape of its family here: its static artifact, else the family's dynamic one (another
            # process went dynamic already), else a static compile (torch compiles the first shape static).
            tried: set[str] = set()
            for candidate, is_dynamic in ((key, False), (dyn_key, True)):
                found, _ = self._try_load(candidate, fingerprint, args, kwargs, timings, tried=tried)
                if found is not None:
                    found.requested, found.family, found.dynamic = candidate.key, family, is_dynamic
                    return found
            return self._load_or_compile(
                key, fingerprint, args, kwargs, timings, dynamic=False, family=family, tried=tried
            )
        log.info("the sizes of %s changed: its dynamic artifact %s (dynamic=None)", key.key, dyn_key.key)
        try:
            return self._load_or_compile(dyn_key, fingerprint, args, kwargs, timings, dynamic=True, family=family)
        except CompileError as exc:
            # torch would raise here; torchkiln keeps serving static specializations of this family instead.
            log.warning("a dynamic compile of %s failed; compiling each shape static: %s", dyn_key.key, exc.what)
            self._static_only.add(family)
            return self._load_or_compile(key, fingerprint, args, kwargs, timings, dynamic=False, family=family)

    def _fallback(self, error: TorchkilnError, what: str, then: str = "compiling instead") -> None:
        """A reason to miss: raise it when strict, else warn and carry on (``then`` says how)."""
        if self.strict:
            raise error
        warn(f"torchkiln: {what}; {then}. {error}")

    def _try_load(
        self,
        key: cache_key.CacheKey,
        fingerprint: Fingerprint,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        timings: dict[str, float],
        *,
        tried: set[str],
    ) -> tuple[Entry | None, bool]:
        """(the variant of ``key`` that fits these inputs in this process, or None; whether any was stored).

        ``tried`` collects the store keys read; those already in it are not read again (after the lock wait).

        The artifact under ``key`` is tried first, then its variants (store.variants): builds of the same key
        whose inlined sources, re-checked guards or CPU extensions differ. A variant that does not fit is left
        alone: it belongs to another version of the code (a rolling deploy), another value of a module global,
        another CPU. Nothing here deletes or replaces anything.
        """
        if self._store is None:
            return None, False
        start = time.perf_counter()
        full_args = frames.call_args(self.target, self.is_module, args)
        found = False
        first_error: TorchkilnError | None = None
        # Not a variant mismatch but a broken object (corrupt, untrusted, unloadable): reported as a fallback only
        # if no variant fits; a fitting variant is a hit, and the broken object is logged with its fix.
        broken: list[tuple[str, TorchkilnError]] = []
        for store_key in self._candidates(key.key):
            if store_key in tried:
                continue
            data = self._read(store_key)
            if data is None:
                continue  # absent (not "tried"): after a lock wait it may be there
            tried.add(store_key)
            found = True
            timings["store_get"] += time.perf_counter() - start
            try:
                entry = self._load(key, store_key, fingerprint, data, timings, call=(args, kwargs))
                if entry.function.guard_check(full_args, kwargs):
                    for where, problem in broken:
                        log.warning("cached artifact %s is unusable (another variant was used): %s", where, problem)
                    return entry, True
                log.info("the guards of %s reject these inputs: another variant of the key", store_key)
            except StaleArtifactError as exc:
                log.info("%s", exc)  # another variant's artifact: not an error
                first_error = first_error or exc
            except TorchkilnError as exc:
                if self.strict:
                    raise
                broken.append((store_key, exc))
            start = time.perf_counter()
        timings["store_get"] += time.perf_counter() - start
        if found and self.strict and first_error is not None:
            raise first_error
        for where, problem in broken:
            self._fallback(problem, f"cannot use the cached artifact {where}")
        return None, found

    def _candidates(self, key: str) -> Iterator[str]:
        """``key``, then its variants; the variants are listed only when ``key`` itself did not fit."""
        assert self._store is not None
        yield key
        try:
            variants = self._store.variants(key)
        except StoreError as exc:
            self._fallback(exc, f"cannot list the variants of {key}")
            return
        yield from variants

    def _read(self, store_key: str) -> bytes | None:
        assert self._store is not None
        try:
            return self._store.get(store_key)
        except StoreError as exc:
            self._fallback(exc, f"cannot read the cache for {store_key}")
            return None

    def _load(
        self,
        key: cache_key.CacheKey,
        store_key: str,
        fingerprint: Fingerprint,
        data: bytes,
        timings: dict[str, float],
        *,
        call: tuple[Sequence[Any], Mapping[str, Any]] | None = None,
    ) -> Entry:
        function, header = loader.load(
            data,
            key=key.key,
            store_key=store_key,
            fingerprint=fingerprint,
            target=self.target,
            is_module=self.is_module,
            call=call,
            timings=timings,
            signing_key=self._settings.signing_key,
        )
        return Entry(store_key, function, header, len(data))

    def _load_or_compile(
        self,
        key: cache_key.CacheKey,
        fingerprint: Fingerprint,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        timings: dict[str, float],
        *,
        dynamic: bool,
        family: str = "",
        tried: set[str] | None = None,
    ) -> Entry:
        entry = self._load_or_compile_locked(key, fingerprint, args, kwargs, timings, dynamic=dynamic, tried=tried)
        entry.requested, entry.family, entry.dynamic = key.key, family, dynamic
        return entry

    def _load_or_compile_locked(
        self,
        key: cache_key.CacheKey,
        fingerprint: Fingerprint,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        timings: dict[str, float],
        *,
        dynamic: bool,
        tried: set[str] | None = None,
    ) -> Entry:
        tried = set() if tried is None else tried
        entry, _ = self._try_load(key, fingerprint, args, kwargs, timings, tried=tried)
        if entry is not None:
            return entry
        if self._store is None:
            return self._compile(key, fingerprint, args, kwargs, timings, dynamic=dynamic)
        start = time.perf_counter()
        lock = contextlib.ExitStack()
        try:
            with progress.activity(f"waiting for another process compiling {key.key}", after=1.0):
                lock.enter_context(self._store.lock(key.key, self._settings.lock_timeout))
        except StoreError as exc:
            self._fallback(exc, f"cannot take the compile lock for {key.key}")
            return self._compile(key, fingerprint, args, kwargs, timings, dynamic=dynamic)
        try:
            timings["lock_wait"] += time.perf_counter() - start
            # Another process may have published while this one waited (the key, or the variant this process
            # needs): load theirs. What was read before the wait is not read and unpickled a second time.
            entry, _ = self._try_load(key, fingerprint, args, kwargs, timings, tried=tried)
            if entry is not None:
                return entry
            return self._compile(key, fingerprint, args, kwargs, timings, dynamic=dynamic)
        finally:
            try:
                lock.close()
            except StoreError as exc:  # the work is done; a lease that cannot be released expires on its own
                log.warning("could not release the compile lock for %s: %s", key.key, exc)

    def _compile(
        self,
        key: cache_key.CacheKey,
        fingerprint: Fingerprint,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        timings: dict[str, float],
        *,
        dynamic: bool,
    ) -> Entry:
        options = self.recipe.options
        if self.recipe.backend == "inductor":
            options = inductor_options.inductor_options(
                self.recipe.mode, options, dynamic=dynamic, triton=fingerprint.device_type in GPU_DEVICE_TYPES
            )
        built = builder.build(
            self.target,
            args,
            kwargs,
            key=key,
            fingerprint=fingerprint,
            is_module=self.is_module,
            dynamic=dynamic,
            backend=self.recipe.backend,
            options=options,
            timings=timings,
            signing_key=self._settings.signing_key,
        )
        if built.problem is not None:
            # Compiled but not saveable, or not loadable: it still runs compiled here, and nothing is published.
            self._fallback(
                built.problem, built.problem_summary, then="it is not published and runs compiled in this process only"
            )
            return Entry(key.key, built.function, built.header, 0)
        assert built.data is not None  # built.problem is None
        store_key = self._publish(key.key, built.data, timings)
        return Entry(store_key, built.function, built.header, len(built.data))

    def _publish(self, key: str, data: bytes, timings: dict[str, float]) -> str:
        """Publish write-once under ``key``, or, when another build holds it, as a variant beside it (never
        replacing anything: the other build is right for another process). Returns the store key used."""
        if self._store is None:
            return key
        start = time.perf_counter()
        store_key = key
        try:
            if not self._store.put(key, data):
                store_key = variant_key(key, hashlib.sha256(data).hexdigest())
                if not self._store.put(store_key, data):
                    log.info("variant %s was already published", store_key)
        except StoreError as exc:
            self._fallback(exc, f"cannot publish {store_key}", then="the model still runs compiled in this process")
        timings["publish"] += time.perf_counter() - start
        return store_key
