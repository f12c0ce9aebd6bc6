"""The environment fingerprint: what an artifact was built for, and whether this process can load it.

torchkiln owns the ``Fingerprint`` record and its compatibility rule. The record is stored in every artifact's
header and is one part of the cache key (cache_key.py), so an artifact found under a key was built for an
identical environment; ``check_compatible`` is the second line of defence for artifacts read by path
(``torchkiln inspect``, copies between machines) and explains, in words, what differs.

``Fingerprint.current()`` sits on the load (hit) path, so it must stay cheap: it never imports
``torch._dynamo`` or ``torch._inductor`` and never runs a compiler. Triton's version comes from package
metadata, not from importing triton.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchkiln.errors import IncompatibleArtifactError
from torchkiln.layout import FORMAT_VERSION

__all__ = ["GPU_DEVICE_TYPES", "Fingerprint", "missing_cpu_isa"]

#: Device types whose kernels are Triton/toolkit builds tied to the GPU model and toolkit (torch's own
#: ``SystemInfo.check_compatibility`` compares the same things for these).
GPU_DEVICE_TYPES = ("cuda", "xpu")

# Distribution names under which Triton ships: the release wheel, and the builds that PyTorch nightlies and
# ROCm/XPU wheels depend on. Looked up in this order; the first installed one wins.
_TRITON_DISTRIBUTIONS = ("triton", "pytorch-triton", "pytorch-triton-rocm", "pytorch-triton-xpu")

# x86 /proc/cpuinfo flags that name instruction-set extensions. Inductor builds CPU kernels with
# ``-march=native`` (torch/_inductor/cpp_builder.py), so a built kernel library may use any extension of the
# machine that compiled it; torch's coarse ``cpu_capability`` ("AVX2", "AVX512") does not tell AVX512-FP16 or
# AMX apart. Flags outside this list (mitigations, "hypervisor", timer quirks) vary between hosts of one CPU
# model and would split the cache for nothing.
_X86_ISA_FLAG = re.compile(
    r"^(sse\w*|ssse3|avx\w*|amx\w*|fma\w*|f16c|bmi\w*|adx|aes|vaes|pclmulqdq|vpclmulqdq|gfni|sha_ni|movbe|"
    r"popcnt|abm|lzcnt|cx16|lahf_lm|rdrand|rdseed|xsave\w*|fsgsbase|clflushopt|clwb|3dnowprefetch|movdir\w*|"
    r"serialize|waitpkg|cldemote|tsxldtrk|rtm|hle|mmx\w*)$"
)


@functools.cache
def cpu_isa_extensions() -> tuple[str, ...] | None:
    """Instruction-set extensions of this CPU, sorted; ``None`` where /proc/cpuinfo is absent (macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "flags":  # x86: keep only the ISA extensions
            return tuple(sorted({f for f in value.split() if _X86_ISA_FLAG.match(f)}))
        if name == "features":  # aarch64: every entry is an ISA feature (asimd, sve, bf16, i8mm, ...)
            return tuple(sorted(set(value.split())))
    return None


def _triton_version() -> str | None:
    for dist in _TRITON_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What an artifact was built for. Every field is JSON-able; ``to_dict``/``from_dict`` round-trip it."""

    python_version: str  # major.minor.micro: torch refuses a package from another micro version
    python_implementation: str  # "cpython", "pypy": bytecode is implementation-specific
    torch_version: str  # full, with the local part ("2.13.0+cu130"): builds differ by it
    torch_git_version: str  # two nightlies of one day share a version string, not a commit
    triton_version: str | None
    cuda_version: str | None  # the CUDA runtime torch was built against (torch.version.cuda)
    device_type: str  # "cpu", "cuda", ...
    device_name: str  # GPU model name; "cpu" for CPU targets (the ISA fields carry what matters there)
    device_capability: str | None  # "9.0" for an H100; None on CPU
    cpu_capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", "SVE256", ...
    cpu_isa: tuple[str, ...] | None  # CPU targets only: ISA extensions, because kernels use -march=native
    machine: str  # platform.machine(): "x86_64", "aarch64"
    system: str  # platform.system(): "Linux", "Darwin"
    format_version: int = FORMAT_VERSION
    #: Keys a newer writer added; kept so that re-encoding a header loses nothing, never compared.
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def current(cls, device_type: str = "cpu") -> Fingerprint:
        """The fingerprint of this process for targets on ``device_type`` (cheap; no compiler runs)."""
        return _current(device_type)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; unknown keys read by ``from_dict`` are written back unchanged."""
        out: dict[str, Any] = dict(self.extra)
        for field in dataclasses.fields(self):
            if field.name == "extra":
                continue
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fingerprint:
        """Read a dict from any torchkiln version: unknown keys are kept, missing ones read as "unknown"."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        isa = data.get("cpu_isa")
        return cls(
            python_version=str(data.get("python_version", "unknown")),
            python_implementation=str(data.get("python_implementation", "unknown")),
            torch_version=str(data.get("torch_version", "unknown")),
            torch_git_version=str(data.get("torch_git_version", "unknown")),
            triton_version=_opt_str(data.get("triton_version")),
            cuda_version=_opt_str(data.get("cuda_version")),
            device_type=str(data.get("device_type", "unknown")),
            device_name=str(data.get("device_name", "unknown")),
            device_capability=_opt_str(data.get("device_capability")),
            cpu_capability=str(data.get("cpu_capability", "unknown")),
            cpu_isa=None if isa is None else tuple(str(f) for f in isa),
            machine=str(data.get("machine", "unknown")),
            system=str(data.get("system", "unknown")),
            # 0 = "written before format versions existed": never equal to a real version
            format_version=int(data.get("format_version", 0)),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def key_fields(self) -> dict[str, Any]:
        """What the cache key hashes: every field except ``cpu_isa``.

        The CPU rule is one rule, here: an artifact's CPU kernels run on any CPU that has every instruction-set
        extension the compiling CPU had (``missing_cpu_isa``). Hashing the exact extension list into the key would
        make that rule unreachable (a superset host would never find the artifact) and split a fleet of AMD and
        Intel hosts of one ``cpu_capability`` for nothing; so the key carries the coarse ``cpu_capability`` and the
        load checks the list. An artifact a host cannot run is another *variant* of the key, not a key collision.
        """
        out = self.to_dict()
        out.pop("cpu_isa", None)
        out.pop("format_version", None)  # the key's own "format" part carries it (one place, not two)
        return out

    def incompatibilities(self, other: Fingerprint) -> list[str]:
        """Why an artifact built for ``other`` cannot run where ``self`` was taken (``[]`` if it can).

        ``self`` is this process (``Fingerprint.current(...)``), ``other`` the artifact's header. Every
        reason reads "<what> <artifact's> (artifact) != <this process's> (here)".
        """
        reasons: list[str] = []

        def differs(label: str, theirs: object, ours: object) -> None:
            if theirs != ours:
                reasons.append(f"{label} {theirs} (artifact) != {ours} (here)")

        differs("torchkiln artifact format", other.format_version, self.format_version)
        differs("python implementation", other.python_implementation, self.python_implementation)
        differs("python", other.python_version, self.python_version)
        differs("torch", other.torch_version, self.torch_version)
        differs("torch git version", other.torch_git_version, self.torch_git_version)
        differs("machine", other.machine, self.machine)
        differs("system", other.system, self.system)
        differs("device type", other.device_type, self.device_type)
        if self.device_type in GPU_DEVICE_TYPES or other.device_type in GPU_DEVICE_TYPES:
            # Triton kernels are built for one toolkit, Triton release and GPU architecture.
            differs("cuda runtime", other.cuda_version, self.cuda_version)
            differs("triton", other.triton_version, self.triton_version)
            differs("device capability", other.device_capability, self.device_capability)
            differs("device", other.device_name, self.device_name)
        else:
            differs("cpu capability", other.cpu_capability, self.cpu_capability)
            missing = missing_cpu_isa(other.cpu_isa, self.cpu_isa)
            if missing:
                reasons.append(
                    "this CPU lacks instruction-set extensions the artifact's kernels were built for: "
                    + ", ".join(missing)
                )
        return reasons

    def check_compatible(self, other: Fingerprint, *, where: str = "") -> None:
        """Raise ``IncompatibleArtifactError`` with every reason an artifact for ``other`` can't run here."""
        reasons = self.incompatibilities(other)
        if reasons:
            raise IncompatibleArtifactError(
                "artifact was built for another environment: " + "; ".join(reasons),
                where=where or None,
                fix=(
                    "compile it again in this environment (torchkiln.compile does so on a miss; "
                    "`torchkiln compile` prewarms), or load it where the artifact's fingerprint matches "
                    "(`torchkiln inspect` shows it)"
                ),
            )


def missing_cpu_isa(built: Sequence[str] | None, here: Sequence[str] | None) -> list[str]:
    """The extensions kernels built on a CPU with ``built`` may use that a CPU with ``here`` lacks (sorted).

    The one CPU compatibility rule (the key, ``incompatibilities`` and the kernel restore all use it): a library
    built with ``-march=native`` runs on any CPU that has every extension it may use. Unknown lists (``None``:
    no /proc/cpuinfo) cannot be compared and count as compatible; ``cpu_capability`` still has to match.
    """
    if built is None or here is None:
        return []
    return sorted(set(built) - set(here))


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


@functools.cache
def _current(device_type: str) -> Fingerprint:
    # Cached per device type: nothing here changes while a process runs (torch is imported once).
    import torch

    device_name = "cpu"
    capability: str | None = None
    if device_type in GPU_DEVICE_TYPES:
        backend = getattr(torch, device_type)
        # Initialises the device runtime; the target is about to run on that device anyway.
        device_name = str(backend.get_device_name())
        if device_type == "cuda":
            major, minor = torch.cuda.get_device_capability()
            capability = f"{major}.{minor}"
    elif device_type != "cpu":
        device_name = device_type  # mps, hpu, ...: no model name API shared by all of them
    return Fingerprint(
        python_version=platform.python_version(),
        python_implementation=sys.implementation.name,
        torch_version=str(torch.__version__),
        torch_git_version=str(torch.version.git_version),
        triton_version=_triton_version(),
        cuda_version=torch.version.cuda,
        device_type=device_type,
        device_name=device_name,
        device_capability=capability,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_isa=cpu_isa_extensions() if device_type == "cpu" else None,
        machine=platform.machine(),
        system=platform.system(),
        format_version=FORMAT_VERSION,
    )
