"""The Inductor/Triton cache scopes: what torchkiln changes inside torch while it compiles, loads and first calls.

This module owns every use of torch's private Inductor (and AOTAutograd) state on the compile and load paths, so
that kernels/, loader.py and builder.py never touch ``torch._*`` (torch 2.10-2.13):

* :func:`recording` wraps the ``aot_compile`` call: Inductor and Triton write into a private cache dir (so every
  file the compile produces is known *exactly*, even when the user's cache already held some of them: a
  snapshot/diff of the user's cache would miss those, and hooking torch's loaders would tie us to private call
  sites), with :data:`PINNED_SETTINGS`, and the CPU vector ISA Inductor picked is read back at the end.
* :func:`loading` wraps ``load_compiled_function``: it re-applies the settings the kernels were keyed with, lets
  Inductor trust the recorded CPU ISA instead of re-probing it, and loads kernels in this process rather than
  through Inductor's compile-worker pool.
* :func:`without_custom_op_aliasing_check` wraps a loaded graph's first call.
* :func:`inductor_cache_dirs` asks torch where its caches are.

Which files a recording keeps, and how a bundle's files are written back, is kernels/'s business (record.py,
install.py); this module never reads or writes a cache file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

__all__ = [
    "PINNED_SETTINGS",
    "Recorded",
    "Restored",
    "inductor_cache_dirs",
    "loading",
    "recording",
    "settle_isa",
    "without_custom_op_aliasing_check",
]

# Inductor settings that enter the kernels' cache keys and that recording() pins. Only these are ever re-applied
# from a bundle's manifest: a bundle must not be able to set arbitrary config.
# cpp_cache_precompile_headers=False: with it on, every fresh process runs `g++ -E` on the torch headers before
# each kernel lookup (even when the .so exists) and the PCH lives outside TORCHINDUCTOR_CACHE_DIR; the flag also
# adds a -D to the hashed command line, so the compile and the load must agree on it.
PINNED_SETTINGS: dict[str, bool] = {"cpp_cache_precompile_headers": False}


def inductor_cache_dirs() -> list[Path]:
    """The Inductor and Triton cache dirs of this process, from torch's own helpers.

    Triton's dir is the one Inductor gives Triton for device 0 when ``TRITON_CACHE_DIR`` is unset.
    """
    from torch._inductor.runtime.cache_dir_utils import cache_dir, triton_cache_dir

    return [Path(cache_dir()), Path(triton_cache_dir(0))]


@dataclasses.dataclass
class Recorded:
    """What :func:`recording` learnt from torch; ``isa`` is filled in when the ``with`` block exits."""

    torch_version: str
    isa: str | None = None  # Inductor's picked CPU vector ISA, e.g. "avx2"; None if the compile never probed it


@contextlib.contextmanager
def recording(private_dir: Path) -> Iterator[Recorded]:
    """Run the enclosed compile against a private Inductor (``private_dir/inductor``) and Triton
    (``private_dir/triton``) cache, with :data:`PINNED_SETTINGS`.

    Costs a full compile even when the user's Inductor cache could have served parts of it: that is the price of
    knowing exactly which files the artifact needs. In-memory code caches are cleared on entry and exit (as torch's
    own ``fresh_cache`` does) so nothing is served from, or later resolved against, the wrong dir. The caller owns
    ``private_dir`` (creates it, reads it afterwards, removes it).
    """
    import torch
    from torch._inductor import config
    from torch._inductor.utils import clear_caches

    recorded = Recorded(torch_version=torch.__version__)
    env = {
        "TORCHINDUCTOR_CACHE_DIR": str(private_dir / "inductor"),
        "TRITON_CACHE_DIR": str(private_dir / "triton"),
    }
    with _env(env), config.patch(dict(PINNED_SETTINGS)):
        clear_caches()
        try:
            yield recorded
        finally:
            clear_caches()
    recorded.isa = _picked_isa()


class Restored(Protocol):
    """What :func:`loading` needs from a restored kernel bundle (``kernels.RestoreReport``)."""

    @property
    def settings(self) -> Mapping[str, bool]: ...

    @property
    def isa(self) -> str | None: ...

    @property
    def cpu_matches(self) -> bool: ...


@contextlib.contextmanager
def loading(restored: Restored | None = None, *, bundle_settings: bool = True) -> Iterator[None]:
    """Wrap ``load_compiled_function`` so the restored kernels are found and nothing is compiled.

    Always: kernels of the deserialized graph load in this process (see :func:`_in_process_kernel_loading`).
    With ``bundle_settings`` (the load path, loader.py): re-applies the settings the kernels were keyed with
    (``restored.settings``, or :data:`PINNED_SETTINGS` when no bundle was restored), and trusts the recorded CPU
    ISA when Inductor, told to trust the ISAs this CPU reports, picks the same one: then the ``valid_vec_isa_list``
    cache holds it and no dry-compile/``dlopen`` probe runs. Otherwise the cache is cleared and Inductor probes as
    usual (and compiles kernels for the ISA it picks). On AVX-512/AMX hosts the extra bf16/VNNI/AMX probes ignore
    ``vec_isa_ok``: their built files are in the bundle (when the recording was the process's first Inductor
    compile), so no compiler runs, but each still spawns a ``dlopen`` subprocess (torch 2.11: one that imports
    torch). ``bundle_settings=False`` (compiler.load itself, nested in the former or in ``check_loadable``) leaves
    the settings as the caller has them.
    """
    from torch._inductor import config

    with contextlib.ExitStack() as stack:
        stack.enter_context(_in_process_kernel_loading())
        if bundle_settings:
            settings = dict(PINNED_SETTINGS) if restored is None else dict(restored.settings)
            stack.enter_context(config.patch(settings))
            if restored is not None and restored.isa and restored.cpu_matches:
                _trust_isa(restored.isa)
        yield


def settle_isa(restored: Restored) -> bool:
    """What :func:`loading` does about the CPU ISA, done ahead (``torchkiln.preload``, once the kernels of a CPU
    artifact are restored): with the bundle's settings, let Inductor pick its ISA trusting the recorded one, so the
    load finds ``valid_vec_isa_list`` computed (its dry-run probes spawn one process each). True when it ran."""
    from torch._inductor import config

    if not (restored.isa and restored.cpu_matches):
        return False
    with config.patch(dict(restored.settings)):
        _trust_isa(restored.isa)
    return True


@contextlib.contextmanager
def without_custom_op_aliasing_check() -> Iterator[None]:
    """Skip AOTAutograd's custom-op aliasing debug check for the enclosed call (a loaded graph's first call).

    AOTAutograd runs that check under a Python dispatch mode on a compiled graph's first call in every process
    (``torch._functorch.config.check_custom_op_aliasing``): ~1 s of a ~5 s CPU hit on the demo model. The graph is
    the one the compiling process built and ran with the check on, so a loaded copy may skip it once.
    """
    import torch._functorch.config as functorch_config

    if not hasattr(functorch_config, "check_custom_op_aliasing"):  # absent on torch 2.10
        yield
        return
    with functorch_config.patch(check_custom_op_aliasing=False):
        yield


@contextlib.contextmanager
def _in_process_kernel_loading() -> Iterator[None]:
    """Load a deserialized graph's kernels in this process, not through Inductor's compile-worker pool.

    With ``compile_threads > 1`` (Inductor's default on a multi-core host) every Triton kernel of a deserialized
    graph that is not in the in-memory kernel table is sent to a subprocess pool, whose workers must first import
    torch: seconds before the first output although the kernels are already built (restored from the artifact's
    kernel bundle). Loading them in-process reads the built kernels from the cache. A user's explicit
    ``TORCHINDUCTOR_COMPILE_THREADS`` is respected.
    """
    from torch._inductor import config as inductor_config

    if "TORCHINDUCTOR_COMPILE_THREADS" in os.environ or not hasattr(inductor_config, "compile_threads"):
        yield
        return
    with inductor_config.patch(compile_threads=1):
        yield


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set env vars and restore them on exit; Inductor itself sets TRITON_CACHE_DIR as a side effect."""
    names = [*values, "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"]
    old = {name: os.environ.get(name) for name in names}
    try:
        os.environ.update(values)
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _picked_isa() -> str | None:
    """Inductor's chosen CPU vector ISA, only if this process already probed it (no extra probe)."""
    from torch._inductor import cpu_vec_isa

    if cpu_vec_isa.valid_vec_isa_list.cache_info().currsize == 0:
        return None
    return str(cpu_vec_isa.pick_vec_isa())


def _trust_isa(recorded: str) -> None:
    # torch internal: valid_vec_isa_list is functools.cache'd per process (torch 2.10-2.13) and reads
    # config.cpp.vec_isa_ok (env TORCHINDUCTOR_VEC_ISA_OK), the documented "skip the check" knob. Only the first
    # computation in a process can be steered.
    from torch._inductor import config, cpu_vec_isa

    cached = getattr(cpu_vec_isa.valid_vec_isa_list, "cache_info", None)
    if cached is None or cached().currsize:
        return
    with config.patch({"cpp.vec_isa_ok": True}):
        picked = str(cpu_vec_isa.pick_vec_isa())
    if picked != recorded:
        cpu_vec_isa.valid_vec_isa_list.cache_clear()
