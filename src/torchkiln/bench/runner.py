"""The parent side of the benchmark: which processes to start, with which caches, in which order.

Every phase runs in a fresh child process (``child.py``) with its own ``TORCHINDUCTOR_CACHE_DIR`` and
``TRITON_CACHE_DIR``: a new empty folder for "empty caches" phases, or the folder an earlier child of the same
repetition filled for "warm caches" phases. Artifacts the load phases need (MegaCache bytes, an AOTInductor
package, a raw ``aot_compile`` file) are built once per model, in their own processes, and their build cost
is reported under ``prep``. Each child has a time limit and its own log; a phase that fails, crashes or times
out is recorded as such and the run goes on. The parent never imports torch, so it stays light while children
compile.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torchkiln.bench.models import MODELS, model_description
from torchkiln.bench.summary import machine_info, summarize_model

__all__ = ["ONCE_PHASES", "PHASES", "PHASE_TITLES", "BenchConfig", "needed_phases", "run_bench", "run_in_own_session"]


def run_in_own_session(cmd: list[str], env: dict[str, str], log_path: Path, timeout: float) -> int | None:
    """Run a phase process with output to ``log_path``; its exit code, or None when it timed out.

    A new session, so a timeout kills the child and the compile workers it forked, all at once.
    """
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


#: Every phase, in the order the run executes them within one repetition.
PHASE_TITLES: dict[str, str] = {
    "eager": "eager, first call",
    "compile_cold": "torch.compile, empty caches",
    "compile_warm": "torch.compile, warm local caches",
    "megacache": "MegaCache load, empty caches",
    "aoti": "AOTInductor package load, empty caches",
    "aot_raw": "raw aot_compile load, empty caches",
    "tk_miss": "torchkiln miss (compile + store)",
    "tk_hit_empty": "torchkiln hit, empty caches",
    "tk_hit_no_cuts": "the same, start-up cuts off (TORCHKILN_GC_PAUSE=0 TORCHKILN_CUDA_WARM=0 "
    "TORCHKILN_TEMPLATE_MEMO=0)",
    "tk_hit_warm": "torchkiln hit, warm caches",
    "tk_preload": "torchkiln hit + preload, weights from a file (from weights-ready)",
    "tk_preload_bytes": "the same, preload(deserialize=False): torch's load left to compile",
}
PHASES: tuple[str, ...] = tuple(PHASE_TITLES)
#: A phase needs another phase's leftovers (its warm caches or its stored artifact) from the same repetition.
_REQUIRES = {
    "compile_warm": "compile_cold",
    "tk_hit_empty": "tk_miss",
    "tk_hit_no_cuts": "tk_miss",
    "tk_hit_warm": "tk_miss",
    "tk_preload": "tk_miss",
    "tk_preload_bytes": "tk_miss",
}
_CHILD = Path(__file__).with_name("child.py")
#: What the phase ``tk_hit_no_cuts`` turns off: the hit's start-up cuts that have a switch (docs/STARTUP.md).
_NO_CUTS = {"TORCHKILN_GC_PAUSE": "0", "TORCHKILN_CUDA_WARM": "0", "TORCHKILN_TEMPLATE_MEMO": "0"}
#: Load phases and the artifact each loads (built once per model by a prep process), cheapest build first.
_LOAD_PHASES = (("megacache", "megacache.bin"), ("aot_raw", "aot.bin"), ("aoti", "model.pt2"))


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: ["demo"])
    device: str = "cpu"
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    reps: int = 3
    calls: int = 50
    #: torch.set_num_threads in every child (None: torch's default, one per core).
    threads: int | None = None
    timeout_s: float = 1200.0
    #: Where caches, artifacts, specs and logs go; a temporary folder (removed afterwards) when None.
    workdir: str | None = None
    keep: bool = False
    #: torchkiln cache for the tk_* phases. None: a fresh folder per repetition under workdir. Otherwise a
    #: path or URL under which each repetition gets its own sub-folder (so every miss is a real miss), or,
    #: with ``tk_cache_exact``, the exact cache to use (``torchkiln demo`` fills the user's default cache).
    tk_cache: str | None = None
    tk_cache_exact: bool = False
    python: str = sys.executable
    #: Overall time budget in seconds (None: none). Past it, phases left are recorded as skipped, and no
    #: child runs longer than the time that remains.
    deadline_s: float | None = None
    #: Phases that run in the first repetition only (any of :data:`ONCE_PHASES`): later repetitions reuse what
    #: they left (the eager reference, the cold compile's caches for ``compile_warm``, the miss's artifact for
    #: the hits), so a short GPU budget still gets >= 3 fresh processes of the hits; their own medians are of 1.
    once: list[str] = field(default_factory=list)


#: What ``BenchConfig.once`` may name.
ONCE_PHASES = ("eager", "compile_cold", "tk_miss")


def needed_phases(selected: list[str]) -> list[str]:
    """The selected phases plus those they depend on, in execution order."""
    unknown = sorted(set(selected) - set(PHASES))
    if unknown:
        raise ValueError(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
    need = set(selected) | {_REQUIRES[p] for p in selected if p in _REQUIRES}
    return [p for p in PHASES if p in need]


def run_bench(
    config: BenchConfig,
    progress: Callable[[str], None] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every model's phases ``config.reps`` times; return the results (schema: BENCHMARKS.md).

    ``progress`` gets one line per child started and finished; ``on_update`` gets the results so far after
    every child, so a caller can checkpoint them (a run cut short by an outer time limit keeps its numbers).
    """
    for name in config.models:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    phases = needed_phases(config.phases)
    if set(config.once) - set(ONCE_PHASES):
        raise ValueError(f"--once takes {', '.join(ONCE_PHASES)}, not {', '.join(sorted(set(config.once)))}")
    workdir = Path(config.workdir) if config.workdir else Path(tempfile.mkdtemp(prefix="torchkiln-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "meta": machine_info(config.device),
        "config": asdict(config) | {"phases": phases},
        "models": {},
    }
    if config.keep or config.workdir:
        results["config"]["workdir"] = str(workdir)  # where the kept logs and artifacts are
    started = time.monotonic()
    deadline = started + config.deadline_s if config.deadline_s else None

    def update(name: str, raw: dict[str, Any]) -> None:
        results["models"][name] = summarize_model(name, model_description(name), config.device, raw)
        results["meta"]["wall_s"] = time.monotonic() - started
        results["meta"]["loadavg_end"] = list(os.getloadavg())
        _fill_torch_facts(results)
        if on_update is not None:
            on_update(results)

    try:
        run_id = uuid.uuid4().hex[:8]
        for name in config.models:
            runner = _ModelRun(
                config,
                name,
                phases,
                mdir=workdir / name,
                run_id=run_id,
                say=progress or (lambda _msg: None),
                deadline=deadline,
                on_child=update,
            )
            update(name, runner.run())
    finally:
        if not config.keep and not config.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def _fill_torch_facts(results: dict[str, Any]) -> None:
    """torch version and device name come from the children: the parent does not import torch."""
    for model in results["models"].values():
        for phase in model["phases"].values():
            for run in phase["runs"]:
                for key in ("torch_version", "device_name"):
                    if run.get(key) and key not in results["meta"]:
                        results["meta"][key] = run[key]


class _ModelRun:
    def __init__(
        self,
        config: BenchConfig,
        model: str,
        phases: list[str],
        *,
        mdir: Path,
        run_id: str,
        say: Callable[[str], None],
        deadline: float | None,
        on_child: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.config, self.model, self.phases = config, model, phases
        self.mdir, self.run_id, self.say = mdir, run_id, say
        self.deadline, self.on_child = deadline, on_child
        self.runs: dict[str, list[dict[str, Any]]] = {p: [] for p in phases}
        self.prep: dict[str, dict[str, Any]] = {}
        self.artifacts = mdir / "artifacts"
        #: what the first repetition left for the phases of ``config.once``: the cold caches, the miss's cache/key
        self.first: dict[str, Any] = {}

    def raw(self) -> dict[str, Any]:
        return {"runs": self.runs, "prep": self.prep}

    def run(self) -> dict[str, Any]:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        for rep in range(self.config.reps):
            self._rep(rep, self.mdir / f"rep{rep}")
        return self.raw()

    def _rep(self, rep: int, rdir: Path) -> None:
        """One repetition. The order puts what the targets need first, the costliest artifact (AOTI) last,
        so a run cut short by ``deadline_s`` still has the comparisons that matter."""
        want = set(self.phases)
        if rep > 0:
            want -= set(self.config.once)
        if "eager" in want:
            self._record("eager", self._child(rdir, "eager", rdir / "ind_eager"))
        build_megacache = rep == 0 and "megacache" in want
        if "compile_cold" in want or build_megacache:
            # The first cold compile also saves the MegaCache artifact, after its measurements are taken,
            # which spares the machine one more full compile.
            extra: dict[str, Any] = (
                {"save": str(self.artifacts / "megacache.bin"), "prep": "megacache"} if build_megacache else {}
            )
            res = self._child(rdir, "compile_cold", rdir / "ind_cold", **extra)
            if "compile_cold" in want:
                self._record("compile_cold", res)
            if build_megacache:
                self.prep["megacache"] = _prep_record(res, res.get("saved_bytes"), res.get("first_output_s"))
        if "compile_cold" in want:
            self.first.setdefault("cold", rdir / "ind_cold")
        if "compile_warm" in want:
            cold = rdir / "ind_cold" if "compile_cold" in want else self.first.get("cold", rdir / "ind_cold")
            self._record("compile_warm", self._child(rdir, "compile_warm", cold))
        if want & {"tk_miss", "tk_hit_empty", "tk_hit_no_cuts", "tk_hit_warm", "tk_preload", "tk_preload_bytes"}:
            self._tk_phases(rep, rdir, want)
        for phase, filename in _LOAD_PHASES:
            if phase not in want:
                continue
            path = self.artifacts / filename
            if rep == 0 and phase != "megacache":
                res = self._child(rdir, "prep", rdir / f"ind_prep_{phase}", prep=phase, save=str(path))
                self.prep[phase] = _prep_record(res, res.get("artifact_bytes"), res.get("prep_s"))
            if not self.prep.get(phase, {}).get("ok"):
                error = self.prep.get(phase, {}).get("error") or "artifact was not built"
                self._record(phase, {"phase": phase, "ok": False, "error": f"prep failed: {error}"})
                continue
            self._record(phase, self._child(rdir, phase, rdir / f"ind_{phase}", artifact=str(path)))

    def _tk_phases(self, rep: int, rdir: Path, want: set[str]) -> None:
        """The miss, then the hits of what it stored: new machine, same machine, and the preload scenario."""
        if "tk_miss" in want:
            tk_cache, warm = self._tk_cache(rep, rdir), rdir / "ind_tk"
            miss = self._child(rdir, "tk_miss", warm, tk_cache=tk_cache)
            self._record("tk_miss", miss)
            self.first.setdefault("tk", (tk_cache, warm, miss.get("key")))
        elif "tk" in self.first:  # --once tk_miss: the first repetition's artifact serves every repetition's hits
            tk_cache, warm, key = self.first["tk"]
            miss = {"key": key}
        else:
            return
        if "tk_hit_empty" in want:
            self._record("tk_hit_empty", self._child(rdir, "tk_hit_empty", rdir / "ind_tk_hit", tk_cache=tk_cache))
        if "tk_hit_no_cuts" in want:  # the hit without gc_pause.py and cuda_warm.py, in the same run
            plain = self._child(rdir, "tk_hit_no_cuts", rdir / "ind_tk_hit_plain", tk_cache=tk_cache, env=_NO_CUTS)
            self._record("tk_hit_no_cuts", plain)
        if "tk_hit_warm" in want:
            self._record("tk_hit_warm", self._child(rdir, "tk_hit_warm", warm, tk_cache=tk_cache))
        for phase in ("tk_preload", "tk_preload_bytes"):
            if phase in want:
                self._record(phase, self._preload_child(phase, rep, rdir, tk_cache, miss.get("key")))

    def _preload_child(self, phase: str, rep: int, rdir: Path, tk_cache: str | None, key: Any) -> dict[str, Any]:
        """The preload scenario: the model's weights are read from a file (built once per model) while
        ``torchkiln.preload`` runs; its first output counts from weights-ready."""
        weights = self.artifacts / "weights.safetensors"
        if "weights" not in self.prep:
            res = self._child(rdir, "prep", rdir / "ind_prep_weights", prep="weights", save=str(weights))
            self.prep["weights"] = _prep_record(res, res.get("artifact_bytes"), res.get("prep_s"))
        if not self.prep["weights"].get("ok"):
            error = self.prep["weights"].get("error") or "the weights file was not written"
            return {"phase": phase, "ok": False, "error": f"prep failed: {error}"}
        saved = self.prep["weights"].get("saved_as") or str(weights)
        return self._child(rdir, phase, rdir / f"ind_{phase}", tk_cache=tk_cache, key=key, weights=saved)

    def _tk_cache(self, rep: int, rdir: Path) -> str | None:
        base = self.config.tk_cache
        if self.config.tk_cache_exact:
            return base  # None: torchkiln's own default (TORCHKILN_CACHE, else the user cache)
        if base is None:
            return str(rdir / "tkcache")
        suffix = f"bench-{self.run_id}/{self.model}/rep{rep}"
        return f"{base.rstrip('/')}/{suffix}" if "://" in base else str(Path(base) / suffix)

    def _record(self, phase: str, result: dict[str, Any]) -> None:
        self.runs[phase].append(result)
        self.on_child(self.model, self.raw())

    def _child(
        self, rdir: Path, phase: str, inductor_dir: Path, *, env: dict[str, str] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Run one child to completion (or its time limit) and return its result record (``env``: variables
        set for it alone)."""
        rdir.mkdir(parents=True, exist_ok=True)
        label = phase if phase != "prep" else f"prep_{extra['prep']}"
        timeout = self.config.timeout_s
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout < 1:
                self.say(f"{self.model} {rdir.name} {label}: skipped (deadline)")
                return {"phase": phase, "ok": False, "error": "skipped: the run's deadline passed"}
        self.say(f"{self.model} {rdir.name} {label} ...")
        spec_path = rdir / f"{label}.spec.json"
        result_path = rdir / f"{label}.result.json"
        log_path = rdir / f"{label}.log"
        result_path.unlink(missing_ok=True)
        env = {**os.environ, **(env or {})}
        env["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_dir)
        env["TRITON_CACHE_DIR"] = str(inductor_dir / "triton")
        # The child runs by path; make sure it imports this very torchkiln, installed or not.
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        spec = {
            "phase": phase,
            "model": self.model,
            "device": self.config.device,
            "calls": self.config.calls,
            "threads": self.config.threads,
            "ref": str(self.mdir / "ref.pt"),
            "result": str(result_path),
            "spawn_wall": time.time(),
            **extra,
        }
        spec_path.write_text(json.dumps(spec))
        started = time.perf_counter()
        returncode = run_in_own_session([self.config.python, str(_CHILD), str(spec_path)], env, log_path, timeout)
        wall = time.perf_counter() - started
        if returncode is None:
            result = {"phase": phase, "ok": False, "error": f"timed out after {timeout:.3g} s"}
        elif result_path.exists():
            result = json.loads(result_path.read_text())
        else:
            result = {"phase": phase, "ok": False, "error": f"child exited with code {returncode}, no result"}
        if not result.get("ok"):
            result["log_tail"] = _tail(log_path)
        result.update(wall_s=wall, log=str(log_path))
        status = "ok" if result.get("ok") else f"FAILED: {str(result.get('error', ''))[:200]}"
        self.say(f"{self.model} {rdir.name} {label}: {status} ({wall:.1f} s)")
        return result


def _prep_record(res: dict[str, Any], nbytes: Any, seconds: Any) -> dict[str, Any]:
    ok = bool(res.get("ok")) and bool(nbytes)
    record = {"ok": ok, "artifact_bytes": nbytes, "build_s": seconds, "log": res.get("log")}
    if res.get("saved_as"):
        record["saved_as"] = res["saved_as"]
    if not ok:
        record["error"] = res.get("error") or res.get("save_error") or "no artifact saved"
    return record


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")
