"""Tensor-parallel and data-parallel ranks under torch.distributed (gloo on CPU), 2 and 4 ranks.

Each world size launches twice (tests/distributed/launch.py: a fresh interpreter per rank, its own empty Inductor
cache) over one shared torchkiln cache; the 2- and 4-rank worlds share that cache too. What must hold:

- tensor parallel (``TensorParallelMLP``: functional all_reduce in the graph, the shard offset from
  ``dist.get_rank``): every rank compiles its own artifact in the first launch (one key per rank: the rank is in the
  key, as are world size and backend) and every rank hits in the second; each rank's output equals the unsharded
  model's. Without the rank in the key, a rank loads another rank's graph with that rank's offset baked in and
  answers wrongly (src/torchkiln/describe.py, ``describe_distributed``); without the guard filter's care for the
  process-group attribute, nothing is published (``'_Missing' object has no attribute 'group_name'``).
- data parallel (``Replica``): one key for all ranks of a world, exactly one compile per world (the others wait on
  the lock and load it), every rank hits in the second launch.
- a rank read where the key cannot see it before tracing (``ShiftedByHelper``, 2 ranks): never published as a
  replica artifact (a warning says why), every rank's output still right in both launches.
- DTensor (``parallelize_module``, 2 ranks): as tensor parallel, with the placements in the key.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import parse_result, run_script

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU backend needs g++"),
]

LAUNCH = Path(__file__).resolve().parent / "launch.py"
#: What each world runs (2 cores: a 4-rank launch is 4 interpreters compiling at once). The never-published case
#: compiles on every rank of every launch, and DTensor's trace is the slowest: both in the 2-rank world only.
MODELS = {
    2: ["tensor_parallel", "replica", "shifted_by_helper", "dtensor"],
    4: ["tensor_parallel", "replica"],
}
ATOL = 1e-5


def _launch(world_size: int, cache: Path, scratch: Path) -> list[dict[str, dict[str, Any]]]:
    config = {"world_size": world_size, "cache": str(cache), "scratch": str(scratch), "models": MODELS[world_size]}
    proc = run_script([str(LAUNCH), json.dumps(config)], scratch, timeout=1500)
    ranks = parse_result(proc.stdout)["ranks"]
    return [{r["model"]: r for r in rank} for rank in ranks]


@pytest.fixture(scope="module")
def launches(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[list[dict[str, dict[str, Any]]]]]:
    work = tmp_path_factory.mktemp("distributed")
    cache = work / "cache"
    return {n: [_launch(n, cache, work / f"world{n}-launch{i}") for i in (1, 2)] for n in (2, 4)}


def _ok(record: dict[str, Any]) -> None:
    assert record["error"] is None, record["error"]["message"]
    assert record["max_diff"] <= ATOL, record


@pytest.mark.parametrize("world_size", [2, 4])
def test_tensor_parallel_ranks_compile_once_each_and_hit(
    launches: dict[int, list[list[dict[str, dict[str, Any]]]]], world_size: int
) -> None:
    first, second = ([rank["tensor_parallel"] for rank in launch] for launch in launches[world_size])
    for record in first + second:
        _ok(record)
        assert record["warnings"] == []
    assert [r["hit"] for r in first] == [False] * world_size, "every rank compiles its own graph"
    assert [r["hit"] for r in second] == [True] * world_size, "every rank hits in a fresh launch"
    keys = [r["key"] for r in first]
    assert len(set(keys)) == world_size, "one key per rank"
    assert [r["key"] for r in second] == keys
    for rank, record in enumerate(first):
        assert record["distributed"]["rank"] == rank
        assert record["distributed"]["world_size"] == world_size
        assert record["distributed"]["backend"] == "gloo"
        assert record["distributed"]["reaches"]  # what made it rank-specific is shown by explain
    other = 4 if world_size == 2 else 2
    assert not set(keys) & {r["tensor_parallel"]["key"] for r in launches[other][0]}, "world sizes do not share"


@pytest.mark.parametrize("world_size", [2, 4])
def test_data_parallel_replicas_share_one_artifact(
    launches: dict[int, list[list[dict[str, dict[str, Any]]]]], world_size: int
) -> None:
    first, second = ([rank["replica"] for rank in launch] for launch in launches[world_size])
    for record in first + second:
        _ok(record)
        assert record["warnings"] == []
        assert "rank" not in record["distributed"]
    assert sorted(r["hit"] for r in first) == [False] + [True] * (world_size - 1), "one compile per world"
    assert [r["hit"] for r in second] == [True] * world_size
    assert len({r["key"] for r in first + second}) == 1


@pytest.mark.parametrize("world_size", [2])
def test_a_rank_the_key_cannot_see_is_never_shared(
    launches: dict[int, list[list[dict[str, dict[str, Any]]]]], world_size: int
) -> None:
    for launch in launches[world_size]:
        for record in (rank["shifted_by_helper"] for rank in launch):
            _ok(record)  # right on every rank: each runs its own compile
            assert record["hit"] is False
            assert record["artifact_bytes"] == 0
            assert len(record["warnings"]) == 1
            assert "torch.distributed" in record["warnings"][0]
            assert "not published" in record["warnings"][0]


@pytest.mark.parametrize("world_size", [2])
def test_dtensor_parallelize_module(
    launches: dict[int, list[list[dict[str, dict[str, Any]]]]], world_size: int
) -> None:
    first, second = ([rank["dtensor"] for rank in launch] for launch in launches[world_size])
    for record in first + second:
        _ok(record)
        assert record["warnings"] == []
    assert [r["hit"] for r in first] == [False] * world_size
    assert [r["hit"] for r in second] == [True] * world_size
    assert len({r["key"] for r in first}) == world_size
    placements = {json.dumps(r["distributed"]["reaches"], sort_keys=True) for r in first}
    assert all("dtensor" in p for p in placements)
