"""The cache key: named parts, each hashed and logged, combined into ``<name>-<sha256>``; and ``explain``.

Modelled on JAX's ``jax/_src/cache_key.py``: the key is an ordered list of ``(name, describe)`` parts. Each
part has a JSON description (what ``torchkiln explain`` shows, built by describe.py) and the sha256 of its
canonical JSON; the key hashes the ordered part digests. Every part's digest is logged at debug on
``torchkiln.cache_key``.

The key is deliberately coarse (DESIGN §5): it names what selects *which* artifact to build, and the load path
validates the rest precisely (inlined sources unchanged, fingerprint compatible, torch's own guards). What is
left out, and why, is ``EXCLUDED``. One exception to coarseness: the ``structure`` part, because the guards
torch cannot serialize (ID_MATCH on modules, function and class matches) are dropped at compile, so nothing
else would notice that a submodule's ``eps`` or activation changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torchkiln.describe import (
    canonical_json,
    describe_distributed,
    describe_inputs,
    describe_structure,
    describe_target,
    value_json,
)
from torchkiln.errors import ArtifactCorruptError
from torchkiln.targets import validate

if TYPE_CHECKING:
    from torchkiln.fingerprint import Fingerprint

__all__ = ["EXCLUDED", "PART_NAMES", "CacheKey", "Explanation", "KeyPart", "PartDiff", "build", "explain"]

logger = logging.getLogger("torchkiln.cache_key")

#: The parts, in the order they are hashed.
PART_NAMES = ("format", "target", "structure", "inputs", "options", "fingerprint")

#: What the key deliberately leaves out, and why: (what, reason).
EXCLUDED: tuple[tuple[str, str], ...] = (
    (
        "parameter and buffer values (weights)",
        "the artifact reads weights from the live module at call time; fine-tuned or re-loaded weights of "
        "one architecture share an artifact (names, shapes, dtypes, devices and requires_grad are keyed)",
    ),
    (
        "the model's file path and the checkpoint path (name_or_path, _name_or_path)",
        "moving a checkout or a virtualenv, or loading the same architecture from another directory, changes "
        "no generated code; source files are keyed by module name and content instead",
    ),
    ("wall-clock time, hostname, user, process id", "they change no generated code"),
    (
        "the torch.distributed rank, for a target that reaches nothing of torch.distributed (a data-parallel replica)",
        "its graph is the same on every rank, so replicas share one artifact; world size and backend are keyed, and "
        "a replica-keyed build whose trace touched torch.distributed after all is not published (builder.py)",
    ),
    (
        "environment variables outside TORCHINDUCTOR_*, TORCHDYNAMO_*, TORCH_COMPILE_*, ATEN_CPU_CAPABILITY",
        "only those change what Dynamo and Inductor generate; cache directories, log settings and the "
        "torchkiln variables (TORCHKILN_CACHE, ...) are dropped even from those families",
    ),
    (
        "transformers_version and _commit_hash inside a model config",
        "the transformers source files are keyed by content in the `target` part, which is more precise",
    ),
    (
        "the exact values of tensor sizes when dynamic=True (other than 0 and 1)",
        "one dynamic artifact serves every size; Dynamo specializes 0 and 1, so those stay in the key",
    ),
    (
        "source files of torch's own modules (torch.nn.Linear, ...) and of modules the target calls into",
        "torch's version and git commit are in the fingerprint; other inlined files are checked precisely "
        "on load against the checksums the artifact records (a changed file makes it stale: a miss)",
    ),
    (
        "global module hooks (torch.nn.modules.module.register_module_forward_hook) and other torch globals",
        "they live in torch private state; per-module hooks are in the `structure` part",
    ),
)

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 64
# Environment families that change generated code (see EXCLUDED); the dropped names inside them do not.
_ENV_PREFIXES = ("TORCHINDUCTOR_", "TORCHDYNAMO_", "TORCH_COMPILE_")
_ENV_EXACT = ("ATEN_CPU_CAPABILITY",)
_ENV_IGNORED = re.compile(r"(CACHE_DIR|_DEBUG_DIR|LOGS?|_VERBOSE|_TRACE|_PROFILE\w*|_DEBUG)$")


@dataclasses.dataclass(frozen=True)
class KeyPart:
    """One named part: ``description`` is JSON-able (shown by explain); ``digest`` its canonical sha256."""

    name: str
    description: Any
    digest: str

    @classmethod
    def of(cls, name: str, description: Any) -> KeyPart:
        return cls(name, description, hashlib.sha256(canonical_json(description).encode()).hexdigest())


@dataclasses.dataclass(frozen=True)
class CacheKey:
    """``key`` is ``<name>-<sha256 of the ordered part digests>``; ``parts`` say what went into it."""

    key: str
    parts: tuple[KeyPart, ...]

    @property
    def name(self) -> str:
        return self.key.rsplit("-", 1)[0]

    def part(self, name: str) -> KeyPart | None:
        return next((p for p in self.parts if p.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "parts": [{"name": p.name, "description": p.description, "digest": p.digest} for p in self.parts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheKey:
        """Rebuild from ``to_dict`` output, checking that every digest and the key match their contents."""
        try:
            parts = tuple(KeyPart.of(str(p["name"]), p["description"]) for p in data["parts"])
            stored = [str(p["digest"]) for p in data["parts"]]
            key = str(data["key"])
        except (KeyError, TypeError) as exc:
            raise ArtifactCorruptError(
                f"cache key record is malformed ({exc!r})", fix="delete the artifact and compile again"
            ) from exc
        wrong = [p.name for p, d in zip(parts, stored, strict=True) if p.digest != d]
        expected = _combine(key.rsplit("-", 1)[0], parts)
        if wrong or expected != key:
            what = f"parts {wrong} do not match their digests" if wrong else "key does not match its parts"
            raise ArtifactCorruptError(
                f"cache key record is inconsistent: {what}",
                where=key,
                fix="delete it with `torchkiln rm KEY` and compile again",
            )
        return cls(key, parts)


def _combine(name: str, parts: Sequence[KeyPart]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        # The name goes in too, so that reordering or renaming parts can never collide.
        hasher.update(f"{part.name}={part.digest};".encode())
    return f"{name}-{hasher.hexdigest()}"


def _sanitize(name: str) -> str:
    # No leading "." or "-" (hidden files, CLI flags); no trailing separators left by replaced characters.
    clean = _NAME_UNSAFE.sub("_", name).lstrip(".-")[:_MAX_NAME].rstrip("._-")
    return clean or "target"


def _default_name(target: Any) -> str:
    import torch

    if isinstance(target, torch.nn.Module):
        return type(target).__name__
    return str(getattr(target, "__name__", type(target).__name__))


def _codegen_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in sorted(environ.items())
        if (k in _ENV_EXACT or k.startswith(_ENV_PREFIXES)) and not _ENV_IGNORED.search(k)
    }


def _torch_context() -> dict[str, Any]:
    # The global state Dynamo's GLOBAL_STATE guard holds (torch/csrc/dynamo/guards.cpp, GlobalStateGuard): grad
    # mode, autocast per device, the default dtype, deterministic mode, the matmul precision flags and the number
    # of intra-op threads. torch keeps that guard and would reject a call under other state, so each state is
    # its own key (an inference and a training artifact do not fight over one key; a host whose OMP_NUM_THREADS
    # differs gets its own build instead of a guard failure).
    import torch

    matmul = torch.backends.cuda.matmul
    return {
        "grad_enabled": torch.is_grad_enabled(),
        "default_dtype": str(torch.get_default_dtype()),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "autocast": {
            device: str(torch.get_autocast_dtype(device))
            for device in ("cpu", "cuda")
            if torch.is_autocast_enabled(device)
        },
        "num_threads": torch.get_num_threads(),
        "matmul": [
            bool(matmul.allow_tf32),
            bool(matmul.allow_fp16_reduced_precision_reduction),
            bool(matmul.allow_bf16_reduced_precision_reduction),
        ],
    }


def _options(options: Mapping[str, Any], dynamic: bool, environ: Mapping[str, str], target: Any) -> dict[str, Any]:
    described: dict[str, Any] = {
        "options": {str(k): value_json(v) for k, v in options.items()},
        "dynamic": dynamic,
        "env": _codegen_env(environ),
        "context": _torch_context(),
    }
    # Only under an initialized torch.distributed (other keys stay as they were): world size, backend, and the
    # rank when the target reaches torch.distributed (describe.describe_distributed says why).
    distributed = describe_distributed(target)
    if distributed is not None:
        described["distributed"] = distributed
    return described


def build(
    target: Any,
    example_args: tuple[Any, ...],
    example_kwargs: Mapping[str, Any],
    *,
    options: Mapping[str, Any],
    fingerprint: Fingerprint,
    dynamic: bool,
    name: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> CacheKey:
    """The key for compiling ``target`` on these example inputs with these options in this environment.

    ``options`` are the compile options as the caller passes them to torch (backend, mode, inductor
    options); ``environ`` defaults to ``os.environ`` (a parameter so tests need not mutate the process).
    Raises ``InvalidTargetError`` for what ``torchkiln.compile`` cannot compile (targets.validate).
    """
    import os

    validate(target)
    describers: list[tuple[str, Callable[[], Any]]] = [
        ("format", lambda: fingerprint.format_version),
        ("target", lambda: describe_target(target)),
        ("structure", lambda: describe_structure(target)),
        ("inputs", lambda: describe_inputs(example_args, example_kwargs, dynamic=dynamic)),
        ("options", lambda: _options(options, dynamic, os.environ if environ is None else environ, target)),
        ("fingerprint", fingerprint.key_fields),
    ]
    parts = []
    for part_name, describe in describers:
        part = KeyPart.of(part_name, json.loads(canonical_json(describe())))
        logger.debug("cache key part %-11s %s", part_name, part.digest)
        parts.append(part)
    key = CacheKey(_combine(_sanitize(name or _default_name(target)), parts), tuple(parts))
    logger.debug("cache key %s", key.key)
    return key


@dataclasses.dataclass(frozen=True)
class PartDiff:
    """One part that differs: both descriptions, and readable change lines (``path: stored -> wanted``)."""

    name: str
    wanted: Any
    stored: Any
    changes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Why ``wanted`` missed: the nearest stored key (most equal parts) and how it differs."""

    wanted: CacheKey
    nearest: CacheKey | None
    equal: tuple[str, ...]
    differences: tuple[PartDiff, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "wanted": self.wanted.key,
            "nearest": None if self.nearest is None else self.nearest.key,
            "equal": list(self.equal),
            "differences": [{"part": d.name, "changes": list(d.changes)} for d in self.differences],
        }

    def lines(self) -> list[str]:
        """The readable form the CLI prints."""
        if self.nearest is None:
            return [f"{self.wanted.key}: nothing is stored to compare with"]
        if not self.differences:
            return [f"{self.wanted.key}: this key is stored (whether an artifact of it fits is checked next)"]
        out = [f"wanted  {self.wanted.key}", f"nearest {self.nearest.key}"]
        out.append("equal parts: " + (", ".join(self.equal) or "none"))
        for diff in self.differences:
            out.append(f"part {diff.name!r} differs:")
            out.extend(f"  {line}" for line in diff.changes)
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


_MAX_CHANGES = 40
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _diff(path: str, stored: Any, wanted: Any, out: list[str]) -> None:
    if len(out) > _MAX_CHANGES:
        return
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for k in sorted(set(stored) | set(wanted), key=str):
            sub = f"{path}.{k}" if _PLAIN_KEY.match(str(k)) else f"{path}[{str(k)!r}]"
            if k not in stored:
                out.append(f"{sub}: added {canonical_json(wanted[k])[:200]}")
            elif k not in wanted:
                out.append(f"{sub}: removed (was {canonical_json(stored[k])[:200]})")
            else:
                _diff(sub, stored[k], wanted[k], out)
    elif (
        isinstance(stored, list)
        and isinstance(wanted, list)
        and len(stored) == len(wanted)
        and any(isinstance(x, dict | list) for x in stored + wanted)
    ):
        for i, (s, w) in enumerate(zip(stored, wanted, strict=True)):
            _diff(f"{path}[{i}]", s, w, out)
    elif stored != wanted:
        out.append(f"{path}: {canonical_json(stored)[:200]} -> {canonical_json(wanted)[:200]}")


def _compare(wanted: CacheKey, stored: CacheKey) -> tuple[tuple[str, ...], tuple[PartDiff, ...]]:
    equal: list[str] = []
    diffs: list[PartDiff] = []
    stored_parts = {p.name: p for p in stored.parts}
    for part in wanted.parts:
        other = stored_parts.get(part.name)
        if other is not None and other.digest == part.digest:
            equal.append(part.name)
            continue
        other_desc = None if other is None else other.description
        changes: list[str] = []
        _diff(part.name, other_desc, part.description, changes)
        if len(changes) > _MAX_CHANGES:
            changes[_MAX_CHANGES:] = ["... (more changes not shown)"]
        diffs.append(PartDiff(part.name, part.description, other_desc, tuple(changes)))
    return tuple(equal), tuple(diffs)


def explain(wanted: CacheKey, stored: Sequence[CacheKey]) -> Explanation:
    """Compare ``wanted`` with the stored key that shares the most equal parts (ties: fewest change lines)."""
    best: tuple[int, int, str] | None = None
    result = Explanation(wanted, None, (), ())
    for candidate in stored:
        equal, diffs = _compare(wanted, candidate)
        score = (-len(equal), sum(len(d.changes) for d in diffs), candidate.key)
        if best is None or score < best:
            best, result = score, Explanation(wanted, candidate, equal, diffs)
    return result
