"""``torchkiln.compile`` and ``CompiledModule``: the hit / miss / fallback / strict policy.

Load path (hit): key -> store.get -> artifact.decode (lengths, sha256 and, with a key configured, the HMAC are
verified before anything is unpickled) -> the header must name this exact request (a validly signed artifact
copied under another key is refused) -> fingerprint compatible -> inlined sources unchanged -> kernels restored
into the Inductor cache -> compiler.load. Every failure there is a miss: a ``TorchkilnWarning`` naming the reason
and a normal compile, unless ``strict`` (or ``TORCHKILN_STRICT=1``), where the typed error is raised.

Compile path (miss): fixes applied, one compiler per key (the store's lock; waiters load what it publishes),
aot_compile inside ``kernels.recording()`` so the artifact carries its built kernels, publish write-once.

Calls: the loaded function's own guards decide whether an input fits a specialization. An input that fits none
(another shape, dtype or device) is never a guard error: its own key is looked up or compiled, and kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torchkiln import arguments, builder, cache_key, compiler, frames, loader, progress, request, settings, targets
from torchkiln.compat import check_supported
from torchkiln.errors import StaleArtifactError, StoreError, TorchkilnError, warn
from torchkiln.fingerprint import Fingerprint
from torchkiln.header import ArtifactHeader
from torchkiln.request import request_fingerprint, request_key
from torchkiln.store import Store, open_store
from torchkiln.store.base import variant_key

__all__ = ["TIMING_KEYS", "CompiledModule", "compile", "request_fingerprint", "request_key"]

log = logging.getLogger("torchkiln")

#: Every ``CompiledModule.timings`` key, on a hit and on a miss alike (0.0 for a phase that did not run), so a
#: dashboard or a ``--json`` consumer reads one shape. Seconds.
TIMING_KEYS = (
    "key",
    "store_get",
    "decode",
    "restore_kernels",
    "load",
    "lock_wait",
    "compile",
    "encode",
    "check_loadable",
    "publish",
    "total",
)


@dataclasses.dataclass
class _Specialization:
    key: str
    function: compiler.LoadedFunction
    header: ArtifactHeader | None  # None: compiled here but not saveable
    artifact_bytes: int


class CompiledModule:
    """The compiled target: call it like the target. ``.key``, ``.hit``, ``.timings``, ``.artifact_bytes``."""

    def __init__(
        self,
        target: Any,
        *,
        is_module: bool,
        store: Store | None,
        name: str | None,
        dynamic: bool,
        backend: str,
        options: Mapping[str, Any],
        strict: bool,
        config: settings.Settings,
    ) -> None:
        self.target = target
        self._is_module = is_module
        self._store = store
        self._name = name
        self._dynamic = dynamic
        self._backend = backend
        self._options = dict(options)
        self.strict = strict
        self._settings = config
        self._specializations: list[_Specialization] = []
        self.key = ""
        self.hit = False
        self.timings: dict[str, float] = {}
        self.artifact_bytes = 0
        self.header: ArtifactHeader | None = None

    # -- calling ------------------------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        full_args = frames.call_args(self.target, self._is_module, args)
        for spec in reversed(self._specializations):
            if spec.function.guard_check(full_args, kwargs):
                return spec.function(*full_args, **kwargs)
        # No specialization fits (another shape, dtype, device, a module global or an attribute that changed):
        # its key is looked up (every variant) or compiled, and kept beside the others.
        spec = self._resolve(args, kwargs)
        return spec.function(*full_args, **kwargs)

    @property
    def specializations(self) -> list[str]:
        return [s.key for s in self._specializations]

    def __repr__(self) -> str:
        return f"CompiledModule({self.key!r}, hit={self.hit}, specializations={len(self._specializations)})"

    # -- resolving a key ----------------------------------------------------------------------------------------
    def _resolve(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> _Specialization:
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        start = time.perf_counter()
        key, fingerprint = request.request_key_and_fingerprint(
            self.target,
            is_module=self._is_module,
            args=args,
            kwargs=kwargs,
            name=self._name,
            dynamic=self._dynamic,
            backend=self._backend,
            options=self._options,
        )
        timings["key"] = time.perf_counter() - start
        spec, hit = self._load_or_compile(key, fingerprint, args, kwargs, timings)
        timings["total"] = time.perf_counter() - start
        self._specializations.append(spec)
        self.key, self.hit, self.timings = spec.key, hit, timings
        self.artifact_bytes, self.header = spec.artifact_bytes, spec.header
        return spec

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
    ) -> tuple[_Specialization | None, bool]:
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
        full_args = frames.call_args(self.target, self._is_module, args)
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
            timings["store_get"] = timings.get("store_get", 0.0) + time.perf_counter() - start
            try:
                spec = self._load(key, store_key, fingerprint, data, timings, call=(args, kwargs))
                if spec.function.guard_check(full_args, kwargs):
                    for where, problem in broken:
                        log.warning("cached artifact %s is unusable (another variant was used): %s", where, problem)
                    return spec, True
                log.info("the guards of %s reject these inputs: another variant of the key", store_key)
            except StaleArtifactError as exc:
                log.info("%s", exc)  # another variant's artifact: not an error
                first_error = first_error or exc
            except TorchkilnError as exc:
                if self.strict:
                    raise
                broken.append((store_key, exc))
            start = time.perf_counter()
        timings["store_get"] = timings.get("store_get", 0.0) + time.perf_counter() - start
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
    ) -> _Specialization:
        function, header = loader.load(
            data,
            key=key.key,
            store_key=store_key,
            fingerprint=fingerprint,
            target=self.target,
            is_module=self._is_module,
            call=call,
            timings=timings,
            signing_key=self._settings.signing_key,
        )
        return _Specialization(store_key, function, header, len(data))

    def _load_or_compile(
        self,
        key: cache_key.CacheKey,
        fingerprint: Fingerprint,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        timings: dict[str, float],
    ) -> tuple[_Specialization, bool]:
        tried: set[str] = set()
        spec, _ = self._try_load(key, fingerprint, args, kwargs, timings, tried=tried)
        if spec is not None:
            return spec, True
        if self._store is None:
            return self._compile(key, fingerprint, args, kwargs, timings), False
        timeout = self._settings.lock_timeout
        start = time.perf_counter()
        lock = contextlib.ExitStack()
        try:
            with progress.activity(f"waiting for another process compiling {key.key}", after=1.0):
                lock.enter_context(self._store.lock(key.key, timeout))
        except StoreError as exc:
            self._fallback(exc, f"cannot take the compile lock for {key.key}")
            return self._compile(key, fingerprint, args, kwargs, timings), False
        try:
            timings["lock_wait"] += time.perf_counter() - start
            # Another process may have published while this one waited (the key, or the variant this process
            # needs): load theirs. What was read before the wait is not read and unpickled a second time.
            spec, _ = self._try_load(key, fingerprint, args, kwargs, timings, tried=tried)
            if spec is not None:
                return spec, True
            return self._compile(key, fingerprint, args, kwargs, timings), False
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
    ) -> _Specialization:
        built = builder.build(
            self.target,
            args,
            kwargs,
            key=key,
            fingerprint=fingerprint,
            is_module=self._is_module,
            dynamic=self._dynamic,
            backend=self._backend,
            options=self._options,
            timings=timings,
            signing_key=self._settings.signing_key,
        )
        if built.problem is not None:
            # Compiled but not saveable, or not loadable: it still runs compiled here, and nothing is published.
            self._fallback(
                built.problem, built.problem_summary, then="it is not published and runs compiled in this process only"
            )
            return _Specialization(key.key, built.function, built.header, 0)
        assert built.data is not None  # built.problem is None
        store_key = self._publish(key.key, built.data, timings)
        return _Specialization(store_key, built.function, built.header, len(built.data))

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


def compile(
    target: Any,
    example_inputs: Any,
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    cache: str | os.PathLike[str] | Store | None = None,
    name: str | None = None,
    dynamic: bool = False,
    backend: str = "inductor",
    options: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> CompiledModule:
    """Compile ``target`` (an nn.Module or a module-level function) once; later processes load the artifact.

    ``example_inputs`` is the tuple of positional arguments (a single tensor is accepted too). ``cache`` is a path
    or URL (``/dir``, ``file://``, ``s3://bucket/prefix``, ``memory://``), else ``$TORCHKILN_CACHE``, else the
    user cache dir. ``strict`` (or ``TORCHKILN_STRICT=1``) raises instead of falling back to a compile.

    Every setting is checked before any work: a bad ``TORCHKILN_*`` variable, cache URL or argument is a
    ``ConfigError`` (``InvalidArgumentError``, also a ``TypeError``, for an argument of the wrong type).
    """
    from torchkiln import preloader

    preloader.join_before_compile()  # a running torchkiln.preload() finishes its imports before anything here runs
    config = settings.current()
    settings.configure_logging(config.log_level)
    check_supported()
    is_module = targets.validate(target)
    args = arguments.example_args(example_inputs)
    kwargs = arguments.check_compile_arguments(
        args,
        example_kwargs=example_kwargs,
        cache=cache,
        name=name,
        dynamic=dynamic,
        backend=backend,
        options=options,
        strict=strict,
    )
    strict = strict or config.strict
    store: Store | None
    if isinstance(cache, Store):
        store = cache
    else:
        try:
            store = open_store(config.cache if cache is None else cache)
        except StoreError as exc:
            if strict:
                raise
            warn(f"torchkiln: cache unavailable, compiling without it: {exc}")
            store = None
    module = CompiledModule(
        target,
        is_module=is_module,
        store=store,
        name=name,
        dynamic=dynamic,
        backend=backend,
        options=options or {},
        strict=strict,
        config=config,
    )
    module._resolve(args, kwargs)  # noqa: SLF001 - the eager form resolves its first specialization here
    return module
