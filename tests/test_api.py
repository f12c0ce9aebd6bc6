"""End-to-end tests of ``torchkiln.compile`` (src/torchkiln/api.py): every round trip crosses a process boundary.

Each claim is checked the way a user meets it: one process compiles into a temporary cache, ANOTHER process
(``tests/helpers/child.py``, started with its own empty ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR``)
loads. Compiles take 10-60 s on a busy 2-core machine, so the default tests share three processes through
module-scoped fixtures: ``built`` compiles every artifact the other tests need (specializations, a dynamic one, a
model whose helper module is edited afterwards, a signed one), ``loaded`` loads them all with fresh compiler
caches, ``faults`` runs the corrupt, unwritable, unsigned and wrongly signed cases. The ``__main__`` scripts,
the 16-process race and the 200-call / 200-load resource checks are ``slow``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import CHILD, child_env, parse_result, run_child, run_script

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU backend needs g++")

MLP = {"target": "helpers.models:tiny_mlp", "inputs": "helpers.models:mlp_inputs"}
TANH = {"target": "helpers.models:scaled_tanh", "function": True, "inputs": "helpers.models:tanh_inputs"}
TANH_DYNAMIC = {**TANH, "dynamic": True, "name": "tanh_dynamic"}
#: float32 round-off between Inductor's fused kernels and eager.
TOL = 1e-5

STALE = {"target": "tk_stale_model:make", "inputs": "tk_stale_model:inputs"}
KEY_ONE, KEY_TWO = "signing-key-one", "signing-key-two"

# One process builds all of these; another loads them. Calls after a compile reach other specializations.
SPECIALIZATIONS: list[dict[str, Any]] = [
    {**MLP, "calls": [{"batch": 8}]},  # another batch size: its own key
    {**TANH, "calls": [{"dtype": "float64"}]},  # another dtype: its own key
    {**TANH_DYNAMIC, "calls": [{"batch": 6}]},  # dynamic: one artifact for both sizes
]


def _artifacts(cache: Path) -> list[Path]:
    return sorted((cache / "v1").glob("*.tkln"))


def _clean(record: dict[str, Any]) -> None:
    """A compile or call that ran without error or fallback warning and matched eager."""
    assert record["error"] is None, record["error"]
    assert record["warnings"] == []
    assert record["max_diff"] <= TOL
    for call in record.get("calls", []):
        _clean(call)


# -- fixtures: the three shared processes ---------------------------------------------------------------------
STALE_MODEL = '''
"""The target's module: the key hashes this file."""
import torch
from torch import nn

import tk_stale_ops


class StaleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return tk_stale_ops.activate(self.fc(x))


def make():
    torch.manual_seed(0)
    return StaleNet().eval()


def inputs(batch=4):
    generator = torch.Generator().manual_seed(7)
    return (torch.randn(batch, 8, generator=generator),)
'''

STALE_OPS = '''
"""A helper module the forward calls: Dynamo inlines it, the key does not hash it."""
import torch


def activate(x):
    return torch.relu(x) * 2.0
'''


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api")
    (root / "src").mkdir()
    (root / "src" / "tk_stale_model.py").write_text(STALE_MODEL)
    (root / "src" / "tk_stale_ops.py").write_text(STALE_OPS)
    return root


@pytest.fixture(scope="module")
def cache(work: Path) -> Path:
    return work / "cache"


def _plan(work: Path) -> list[dict[str, Any]]:
    return [
        *SPECIALIZATIONS,
        {**STALE},
        {**MLP, "cache": str(work / "signed"), "signing_key": KEY_ONE},
    ]


@pytest.fixture(scope="module")
def built(work: Path, cache: Path) -> dict[str, Any]:
    return run_child({"cache": str(cache), "compiles": _plan(work)}, work / "built", pythonpath=[work / "src"])


@pytest.fixture(scope="module")
def loaded(built: dict[str, Any], work: Path, cache: Path) -> dict[str, Any]:
    # (b) Between the two processes, edit a function Dynamo inlined, in a module the key does not hash.
    ops = work / "src" / "tk_stale_ops.py"
    ops.write_text(ops.read_text().replace("* 2.0", "* 3.0"))
    plan = _plan(work)
    # New sizes the builder never saw go to the dynamic artifact (batch 13) and to the MLP's batch-8 key.
    plan[2] = {**TANH_DYNAMIC, "calls": [{"batch": 13}]}
    return run_child({"cache": str(cache), "compiles": plan}, work / "loaded", pythonpath=[work / "src"])


# -- (a) miss, then hit in a fresh process with empty Inductor caches --------------------------------------------
def test_miss_then_hit_in_fresh_process(built: dict[str, Any], loaded: dict[str, Any], cache: Path) -> None:
    first, second = built["compiles"][0], loaded["compiles"][0]
    _clean(first)
    _clean(second)
    assert first["hit"] is False
    assert second["hit"] is True
    assert first["key"] == second["key"]
    assert first["created_at"] == second["created_at"]  # the very artifact the first process published
    assert first["artifact_bytes"] > 0
    assert second["artifact_bytes"] == first["artifact_bytes"]
    assert {"key", "store_get", "compile", "encode", "publish", "total"} <= set(first["timings"])
    assert {"key", "store_get", "decode", "restore_kernels", "load", "total"} <= set(second["timings"])
    assert second["timings"]["compile"] == 0.0 and first["timings"]["compile"] > 0.0
    # Outputs are bit-for-bit those of the compiling process (same artifact, same weights, same inputs).
    assert second["checksum"] == first["checksum"]
    assert loaded["gc_enabled"] is True  # the hit paused the garbage collector while it loaded, and resumed it
    # MLP x2, tanh x2, one dynamic, the stale model and its variant built from the edited helper (both kept)
    assert len(_artifacts(cache)) == 7


# -- (c) guard failures: another batch size or dtype is a new specialization, never a guard error ----------------
def test_other_shape_and_dtype_get_their_own_key(built: dict[str, Any]) -> None:
    for record in built["compiles"][:2]:
        _clean(record)
        call = record["calls"][0]
        assert call["key"] != record["key"]
        assert call["hit"] is False
        assert call["specializations"] == [record["key"], call["key"]]
    assert built["compiles"][0]["calls"][0]["shape"] == [8, 16]
    assert built["compiles"][1]["calls"][0]["dtype"] == "torch.float64"


def test_every_specialization_loads_as_hit_in_fresh_process(built: dict[str, Any], loaded: dict[str, Any]) -> None:
    for before, after in zip(built["compiles"][:2], loaded["compiles"][:2], strict=True):
        _clean(after)
        assert after["hit"] is True
        assert after["key"] == before["key"]
        assert after["calls"][0]["hit"] is True
        assert after["calls"][0]["key"] == before["calls"][0]["key"]
        assert after["timings"]["compile"] == 0.0


def test_dynamic_one_artifact_serves_several_sizes(built: dict[str, Any], loaded: dict[str, Any]) -> None:
    before, after = built["compiles"][2], loaded["compiles"][2]
    _clean(before)
    _clean(after)
    assert before["calls"][0]["key"] == before["key"]
    assert before["calls"][0]["specializations"] == [before["key"]]  # batch 6 used the batch-4 artifact
    assert after["hit"] is True
    assert after["key"] == before["key"]
    # batch 13 was never seen by anyone: still the one artifact, still a hit
    assert after["calls"][0]["specializations"] == [before["key"]]
    assert after["calls"][0]["hit"] is True


# -- (d) corrupt artifacts, (e) unwritable cache ------------------------------------------------------------------
@pytest.fixture(scope="module")
def faults(built: dict[str, Any], loaded: dict[str, Any], work: Path, cache: Path) -> dict[str, Any]:
    corrupt = work / "corrupt"
    (corrupt / "v1").mkdir(parents=True, mode=0o700)
    corrupt.chmod(0o700)
    key = built["compiles"][0]["key"]
    data = bytearray((cache / "v1" / f"{key}.tkln").read_bytes())
    data[len(data) // 2] ^= 0x40  # one bit in the middle of the sections: only the sha256 can notice
    (corrupt / "v1" / f"{key}.tkln").write_bytes(bytes(data))
    blocker = work / "file"
    blocker.write_text("a file where the cache root's parent should be\n")
    signed = str(work / "signed")
    compiles = [
        {**MLP, "cache": str(corrupt), "strict": True},
        {**MLP, "cache": str(corrupt)},
        {**MLP, "cache": str(corrupt)},  # the recompiled artifact replaced the corrupt one: a hit
        {**MLP, "cache": str(blocker / "sub")},
        # (g) with another key configured: the unsigned artifact `built` published, the one signed with key one
        {**MLP, "cache": str(cache), "strict": True, "signing_key": KEY_TWO},
        {**MLP, "cache": signed, "strict": True, "signing_key": KEY_TWO},
        {**MLP, "cache": signed, "signing_key": KEY_TWO},
    ]
    return run_child({"compiles": compiles}, work / "faults")


def test_corrupt_artifact_strict_raises(faults: dict[str, Any]) -> None:
    error = faults["compiles"][0]["error"]
    assert error is not None
    assert error["type"] == "ArtifactCorruptError"
    assert "ValueError" in error["mro"]
    assert "sha256" in error["message"]


def test_corrupt_artifact_non_strict_warns_and_recompiles(faults: dict[str, Any]) -> None:
    record = faults["compiles"][1]
    assert record["error"] is None
    assert record["hit"] is False
    assert record["timings"]["compile"] > 0.0
    assert record["max_diff"] <= TOL
    assert record["warnings"], "a corrupt artifact must be reported"
    assert all("compiling instead" in w for w in record["warnings"])
    assert any("sha256" in w for w in record["warnings"])
    again = faults["compiles"][2]
    _clean(again)
    assert again["hit"] is True


def test_unwritable_cache_warns_and_still_runs_compiled(faults: dict[str, Any]) -> None:
    record = faults["compiles"][3]
    assert record["error"] is None
    assert record["warnings"], "an unusable cache must be reported"
    assert all(w.startswith("torchkiln:") for w in record["warnings"])
    assert record["hit"] is False
    assert record["timings"]["compile"] > 0.0  # compiled by Inductor, not an eager fallback
    assert record["max_diff"] <= TOL


# -- (b) stale sources --------------------------------------------------------------------------------------------
def test_stale_inlined_source_recompiles_in_next_process(built: dict[str, Any], loaded: dict[str, Any]) -> None:
    first, second = built["compiles"][3], loaded["compiles"][3]
    _clean(first)
    _clean(second)  # matches eager *with the edit*
    assert first["hit"] is False
    # The edit is invisible to the key, but the load path sees that an inlined source changed: the new build is
    # published as a variant of the same key, beside the first (which stays right for the old source).
    assert second["key"].startswith(first["key"] + ".")
    assert second["hit"] is False
    assert second["timings"]["compile"] > 0.0
    assert second["checksum"] != pytest.approx(first["checksum"])


# -- (g) signed artifacts -----------------------------------------------------------------------------------------
def test_signed_artifact_loads_with_its_key(built: dict[str, Any], loaded: dict[str, Any]) -> None:
    made, same = built["compiles"][4], loaded["compiles"][4]
    _clean(made)
    _clean(same)
    assert made["hit"] is False
    assert same["hit"] is True
    assert same["key"] == made["key"]


def test_other_key_refuses_unsigned_and_wrongly_signed(built: dict[str, Any], faults: dict[str, Any]) -> None:
    for refused in faults["compiles"][4:6]:
        assert refused["error"] is not None
        assert refused["error"]["type"] == "UntrustedArtifactError", refused["error"]
        assert "PermissionError" in refused["error"]["mro"]
    lax = faults["compiles"][6]
    assert lax["error"] is None
    assert lax["hit"] is False
    assert lax["max_diff"] <= TOL
    assert lax["warnings"]
    assert any(built["compiles"][4]["key"] in w for w in lax["warnings"]), "the warning names the refused artifact"


# -- (f) a model class defined in __main__ ------------------------------------------------------------------------
MAIN_SCRIPT = '''
"""A user script that defines its model in __main__ (the case torchkiln must explain)."""
import json, sys, warnings

import torch
from torch import nn

import torchkiln


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.fc(x)) * 2.0


cache, strict, forget = sys.argv[1], sys.argv[2] == "strict", sys.argv[3] == "forget"
torch.manual_seed(0)
model, x = Net(), torch.randn(2, 8)
if forget:
    # The process that loads has the same key but no __main__.Net (what a different script with the same
    # model code would be, were the key blind to the script's file): the artifact's reference cannot resolve.
    del Net
out = {}
with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        compiled = torchkiln.compile(model, (x,), cache=cache, strict=strict)
        out = {"hit": compiled.hit, "key": compiled.key, "diff": float((compiled(x) - model(x)).abs().max())}
    except Exception as exc:
        out = {"error": type(exc).__name__, "message": str(exc)}
out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, torchkiln.TorchkilnWarning)]
print("TKRESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def main_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    work = tmp_path_factory.mktemp("main")
    script = work / "train.py"
    script.write_text(MAIN_SCRIPT)
    copy = work / "elsewhere" / "serve.py"
    copy.parent.mkdir()
    copy.write_text(MAIN_SCRIPT)
    cache = str(work / "cache")
    runs = {}
    for label, path, strict, forget in [
        ("compile", script, "lax", "keep"),
        ("copy", copy, "lax", "keep"),
        ("strict", copy, "strict", "forget"),
        ("lax", copy, "lax", "forget"),
    ]:
        proc = run_script([str(path), cache, strict, forget], work / f"scratch-{label}")
        runs[label] = parse_result(proc.stdout)
    return runs


@pytest.mark.slow
def test_main_class_same_script_text_loads(main_runs: dict[str, dict[str, Any]]) -> None:
    assert main_runs["compile"]["hit"] is False
    assert main_runs["copy"]["hit"] is True
    assert main_runs["copy"]["key"] == main_runs["compile"]["key"]
    assert main_runs["copy"]["diff"] <= TOL
    assert main_runs["copy"]["warnings"] == []


@pytest.mark.slow
def test_main_class_missing_strict_explains(main_runs: dict[str, dict[str, Any]]) -> None:
    run = main_runs["strict"]
    assert run.get("error") == "IncompatibleArtifactError", run
    assert "__main__" in run["message"]
    assert "importable module" in run["message"]  # the fix, not only the diagnosis


@pytest.mark.slow
def test_main_class_missing_non_strict_warns(main_runs: dict[str, dict[str, Any]]) -> None:
    run = main_runs["lax"]
    assert run["warnings"], run
    assert any("__main__" in w and "importable module" in w for w in run["warnings"])
    # The recompile cannot be saved either (pickle cannot name __main__.Net): it runs compiled, unsaved, with a
    # second warning, never an error.
    assert "error" not in run, run
    assert run["hit"] is False
    assert run["diff"] <= TOL


# -- (h) concurrency and resource stability -----------------------------------------------------------------------
@pytest.mark.slow
def test_sixteen_processes_on_empty_cache_compile_once(tmp_path: Path) -> None:
    config = json.dumps({**MLP, "cache": str(tmp_path / "cache")})
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), config],
            env=child_env(tmp_path / f"p{i}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(16)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=1500)
        assert proc.returncode == 0, stderr[-3000:]
        assert not [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
        results.append(parse_result(stdout)["compiles"][0])
    for record in results:
        _clean(record)
    assert sorted(r["hit"] for r in results) == [False] + [True] * 15
    assert len({r["key"] for r in results}) == 1
    assert len({r["created_at"] for r in results}) == 1  # every hit loaded the one compiler's artifact
    assert len({r["checksum"] for r in results}) == 1
    assert len(_artifacts(tmp_path / "cache")) == 1


@pytest.mark.slow
def test_repeated_calls_and_loads_keep_fds_and_memory_flat(built: dict[str, Any], cache: Path, tmp_path: Path) -> None:
    result = run_child({**MLP, "cache": str(cache), "repeat_calls": 200, "repeat_loads": 200}, tmp_path)
    _clean(result["compiles"][0])
    calls, loads = result["repeat"]["calls"], result["repeat"]["loads"]
    assert calls["fds"][1] == calls["fds"][0], calls
    assert calls["rss_kib"][1] - calls["rss_kib"][0] < 8 * 1024, calls
    assert loads["hits"] == 205
    assert loads["fds"][1] <= loads["fds"][0] + 2, loads
    # Each load maps the artifact's kernel library and builds Python code objects; torch keeps some per-process
    # state for every loaded function. The bound catches a leak of the artifact bytes (90 KB x 200 = 18 MB).
    assert loads["rss_kib"][1] - loads["rss_kib"][0] < 64 * 1024, loads
