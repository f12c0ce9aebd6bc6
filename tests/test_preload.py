"""Tests for ``torchkiln.preload`` (src/torchkiln/preloader.py, inductor_cache/warm.py, the loader's prefetch hook).

Every round trip crosses processes: one process compiles (a miss), fresh ones preload and then compile, through
``helpers/preload_child.py``, which, right after ``preload()`` returns, imports the very modules the preload thread
imports from this thread and two more (the collision that breaks a naive background import with
``_DeadlockError`` or a partially-initialized-module ImportError) and records, with an audit hook, which thread ran
which module body. The stress test runs N such processes (20 here, 200 in ``make test-preload-stress``, marked
slow): no deadlock (each has a time limit), no import error, outputs equal to eager.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import HELPERS, run_child, run_script
from torchkiln import import_lock, loader
from torchkiln import preloader as preload_module

MLP = {"target": "helpers.models:tiny_mlp", "inputs": "helpers.models:mlp_inputs"}
NAME = "preload-mlp"
TOL = 1e-5
STRESS_DEFAULT = int(os.environ.get("TORCHKILN_PRELOAD_STRESS", "20"))


def _preload_child(config: dict[str, Any], scratch: Path, timeout: float = 300) -> dict[str, Any]:
    proc = run_script([str(HELPERS / "preload_child.py"), json.dumps(config)], scratch, timeout=timeout)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("TKPRELOAD "))
    result: dict[str, Any] = json.loads(line[len("TKPRELOAD ") :])
    result["stderr"] = proc.stderr
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One miss in its own process, under ``name=NAME``."""
    work = tmp_path_factory.mktemp("preload")
    cache = work / "cache"
    record = run_child({**MLP, "cache": str(cache), "name": NAME}, work / "miss")["compiles"][0]
    assert record["error"] is None and record["hit"] is False
    return {"work": work, "cache": cache, "key": record["key"]}


def _assert_clean_hit(result: dict[str, Any], *, prefetched: list[str] | None = None) -> None:
    assert result["errors"] == [], result["errors"]
    assert "DeadlockError" not in result["stderr"] and "partially initialized" not in result["stderr"]
    assert result["hit"] is True
    assert result["max_diff"] <= TOL
    assert result["state"] == "done", result
    assert result["background_imports"] is True
    assert result["import_failures"] == []
    assert result["warnings"] == []
    # no module body ran on another thread while the preload thread held the import lock, and the preload thread
    # ran none after it released it
    assert result["imports_by_others_during"] == []
    assert result["late_imports"] == []
    if prefetched is not None:
        assert result["prefetched"] == prefetched


def test_preload_by_name_prepares_the_artifact_and_compile_hits(built: dict[str, Any], tmp_path: Path) -> None:
    result = _preload_child({**MLP, "cache": str(built["cache"]), "name": NAME, "preload": {"name": NAME}}, tmp_path)
    _assert_clean_hit(result, prefetched=[built["key"]])
    assert result["device"] == "cpu"
    assert result["timings"]["torch_imports"] > 0
    assert result["timings"]["decode"] > 0 and result["timings"]["restore_kernels"] > 0
    assert result["preload_call_s"] < 5  # returns once the thread holds the lock, not after the imports
    # torch's deserialization ran on the preload thread (under the import lock: _assert_clean_hit), and compile used
    # that function: its own load step did no deserialization
    assert result["deserialized"] == built["key"] and result["timings"]["deserialize"] > 0
    assert result["compile_timings"]["load"] < result["timings"]["deserialize"] + 0.05


def test_preload_leaves_deserialization_to_compile_when_told(built: dict[str, Any], tmp_path: Path) -> None:
    spec = {"name": NAME, "deserialize": False}
    result = _preload_child({**MLP, "cache": str(built["cache"]), "name": NAME, "preload": spec}, tmp_path)
    _assert_clean_hit(result, prefetched=[built["key"]])
    assert result["deserialized"] is None and "deserialize" not in result["timings"]


def test_preload_does_not_load_a_function_artifact_ahead(tmp_path: Path) -> None:
    """A function artifact loads against a copy of its module's globals, which could go stale before compile:
    it is prepared (read, verified, kernels restored) but deserialized by compile, and still hits."""
    function = {"target": "helpers.models:scaled_tanh", "function": True, "inputs": "helpers.models:tanh_inputs"}
    cache = tmp_path / "cache"
    record = run_child({**function, "cache": str(cache), "name": "preload-fn"}, tmp_path / "miss")["compiles"][0]
    assert record["error"] is None and record["hit"] is False
    spec = {"name": "preload-fn"}
    result = _preload_child({**function, "cache": str(cache), "name": "preload-fn", "preload": spec}, tmp_path / "p")
    _assert_clean_hit(result, prefetched=[record["key"]])
    assert result["deserialized"] is None


@pytest.mark.parametrize("how", ["key", "target"])
def test_preload_by_key_or_by_target(built: dict[str, Any], tmp_path: Path, how: str) -> None:
    spec: dict[str, Any] = {"key": built["key"]} if how == "key" else {"target": True, "name": NAME}
    result = _preload_child({**MLP, "cache": str(built["cache"]), "name": NAME, "preload": spec}, tmp_path)
    _assert_clean_hit(result, prefetched=[built["key"]])


def test_preload_without_an_artifact_does_the_imports_only(built: dict[str, Any], tmp_path: Path) -> None:
    result = _preload_child({**MLP, "cache": str(built["cache"]), "name": NAME, "preload": {}}, tmp_path)
    _assert_clean_hit(result, prefetched=[])
    assert "store_get" not in result["timings"]


def test_preload_of_a_corrupt_artifact_leaves_it_to_compile(built: dict[str, Any], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(built["cache"], cache)
    (artifact,) = [p for p in cache.rglob("*.tkln")]
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0xFF
    artifact.chmod(0o600)
    artifact.write_bytes(bytes(data))
    result = _preload_child({**MLP, "cache": str(cache), "name": NAME, "preload": {"name": NAME}}, tmp_path / "p")
    assert result["errors"] == [] and result["state"] == "done"
    assert result["prefetched"] == []  # nothing unverified is ever handed on
    assert result["hit"] is False and result["max_diff"] <= TOL  # compile saw the corruption itself, and compiled
    assert any("corrupt" in w or "sha256" in w for w in result["warnings"]), result["warnings"]


def test_compile_stops_waiting_for_a_slow_store_and_loads_itself(built: dict[str, Any], tmp_path: Path) -> None:
    config = {
        **MLP,
        "cache": str(built["cache"]),
        "name": NAME,
        "preload": {"name": NAME},
        "store_delay": 8,
        "join_timeout": 0.5,
        "collide": False,
    }
    result = _preload_child(config, tmp_path)
    assert result["errors"] == []
    assert result["hit"] is True and result["max_diff"] <= TOL
    assert result["state"] == "abandoned" and result["prefetched"] == []
    assert any("did not finish reading the artifact" in w for w in result["warnings"]), result["warnings"]


def _stress(built: dict[str, Any], root: Path, n: int) -> None:
    config = {**MLP, "cache": str(built["cache"]), "name": NAME, "preload": {"name": NAME}}

    def one(i: int) -> dict[str, Any]:
        return _preload_child(config, root / f"p{i}", timeout=600)

    failures: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for i, result in enumerate(pool.map(one, range(n))):
            try:
                _assert_clean_hit(result, prefetched=[built["key"]])
            except AssertionError as exc:
                failures.append(f"process {i}: {exc}")
    assert failures == [], failures[:5]


def test_preload_stress(built: dict[str, Any], tmp_path: Path) -> None:
    """N fresh processes (20; TORCHKILN_PRELOAD_STRESS overrides): each preloads while three threads import the
    same modules, then compiles and calls: no deadlock (each process has a time limit), no import error, outputs
    equal to eager, every one a hit with the prepared artifact."""
    _stress(built, tmp_path, STRESS_DEFAULT)


@pytest.mark.slow
def test_preload_stress_200(built: dict[str, Any], tmp_path: Path) -> None:
    _stress(built, tmp_path, 200)


# -- in this process ------------------------------------------------------------------------------------------
@pytest.fixture
def no_preload(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(preload_module, "_current", None)
    yield
    job = preload_module.current()
    if job is not None:
        job.join()
    loader.withdraw()


def test_preload_twice_returns_the_running_one(no_preload: None, tmp_path: Path) -> None:
    first = preload_module.preload(cache=str(tmp_path / "c"), device="cpu")
    second = preload_module.preload(cache=str(tmp_path / "c"), device="cpu")
    assert first.join(300)
    assert second is first or first.state == "done"
    assert preload_module.current() is not None


def test_without_an_import_lock_the_imports_stay_on_the_callers_thread(
    no_preload: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(import_lock, "import_lock", lambda: None)
    job = preload_module.preload(cache=str(tmp_path / "c"), device="cpu")
    assert job.join(60)
    assert job.background_imports is False
    assert job.imports is None and "torch_imports" not in job.timings
    assert job.state == "done"


def test_the_import_lock_is_cpythons() -> None:
    lock = import_lock.import_lock()
    assert lock is not None
    acquire, release = lock
    acquire()
    try:
        acquire()  # re-entrant for its holder
        release()
    finally:
        release()
    assert threading.current_thread() is threading.main_thread()


def test_prefetched_bytes_are_used_only_for_the_same_bytes_and_key() -> None:
    fake = loader.Prefetched(b"abc", None, None, None, None)  # type: ignore[arg-type]
    loader.offer("k", fake)
    assert loader._take("k", b"abd", None) is None  # other bytes: not used (and gone)
    loader.offer("k", fake)
    assert loader._take("k", b"abc", b"key") is None  # another signing key
    loader.offer("k", fake)
    assert loader._take("other", b"abc", None) is None
    assert loader._take("k", b"abc", None) is fake
    assert loader._take("k", b"abc", None) is None  # once


def _slow_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, seconds: float) -> None:
    (tmp_path / f"{name}.py").write_text(f"import time\ntime.sleep({seconds})\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_preload_waits_until_no_other_thread_is_inside_an_import(
    no_preload: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread mid-import may hold a module lock the preload thread needs: preload takes the import lock
    only once that import is over (otherwise: a deadlock)."""
    import importlib
    import time

    _slow_module(tmp_path, monkeypatch, "tk_slow_import_a", 1.0)
    other = threading.Thread(target=importlib.import_module, args=("tk_slow_import_a",))
    other.start()
    time.sleep(0.2)  # the other thread is inside the module body now
    assert import_lock.importing_threads({threading.get_ident()}) == {other.ident}
    start = time.monotonic()
    job = preload_module.preload(cache=str(tmp_path / "c"), device="cpu")
    waited = time.monotonic() - start
    other.join()
    assert job.join(300)
    assert waited >= 0.5, waited  # returned only after the other import finished
    assert job.background_imports is True and job.state == "done"
    assert job.timings["lock_wait"] >= 0.5


def test_preload_leaves_the_work_to_compile_when_other_threads_keep_importing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    import time

    _slow_module(tmp_path, monkeypatch, "tk_slow_import_b", 1.0)
    other = threading.Thread(target=importlib.import_module, args=("tk_slow_import_b",))
    other.start()
    time.sleep(0.2)
    lock = import_lock.import_lock()
    assert lock is not None
    assert import_lock.hold_when_no_import_runs(lock, set(), limit=0.1) is False
    other.join()  # it could finish its import: the lock was not kept
    assert import_lock.hold_when_no_import_runs(lock, set(), limit=0.1) is True
    lock[1]()


def test_waiting_for_cuda_stops_when_compile_arrives() -> None:
    """A CUDA artifact is loaded ahead only once the program initialized CUDA (never here: no GPU, or nobody used
    it): the thread waits, holding nothing, and gives up as soon as compile joins it."""
    import time

    from torchkiln import load_ahead

    torch = pytest.importorskip("torch")
    if torch.cuda.is_initialized():
        pytest.skip("CUDA is initialized in this process")
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    start = time.monotonic()
    assert load_ahead.wait_for_device("cuda", stop) is False
    assert 0.15 < time.monotonic() - start < 5
    assert load_ahead.wait_for_device("cuda", threading.Event(), limit=0.05) is False
    assert load_ahead.wait_for_device("xpu", threading.Event()) is False  # not handled: compile loads it
    assert load_ahead.wait_for_device("cpu", threading.Event()) is True


def test_waiting_for_cuda_never_keeps_a_finished_program_alive(tmp_path: Path) -> None:
    """The preload thread is not a daemon (it may hold the import lock); its wait for CUDA ends with the program."""
    import subprocess
    import sys
    import time

    script = (
        "import threading\n"
        "from torchkiln import load_ahead\n"
        "t = threading.Thread(target=load_ahead.wait_for_device, args=('cuda', threading.Event()))\n"
        "t.start()\n"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 60  # the wait's own limit is 600 s


def test_a_load_ahead_under_way_is_never_abandoned() -> None:
    """compile's join timed out: phase 2's work is abandoned, but a phase-3 load under way is waited for (compile's
    own load would race it: Inductor's settings are process-wide)."""
    job = preload_module.Preload(join_timeout=0.1, background_imports=True)
    job._loading_ahead = True
    assert job.abandon() is False and job.state == "running"
    job._loading_ahead = False
    assert job.abandon() is True and job.state == "abandoned"
