"""The torch.distributed facts in the cache key (describe.describe_distributed) and the builder's replica net.

In-process, a one-rank gloo world: fast. The multi-rank behaviour (ranks that must not share, replicas that must)
is tests/distributed/test_tensor_parallel.py (slow).
"""

from __future__ import annotations

import socket
import types
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist

from distributed import tp_models
from torchkiln import builder, cache_key, compiler
from torchkiln.describe import describe_distributed
from torchkiln.fingerprint import Fingerprint

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without torch.distributed")


@pytest.fixture
def world() -> Iterator[None]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _key(target: torch.nn.Module) -> cache_key.CacheKey:
    x = tp_models.example_input()
    return cache_key.build(target, (x,), {}, options={}, fingerprint=Fingerprint.current(), dynamic=False)


def test_no_distributed_part_without_a_process_group() -> None:
    model = tp_models.replica(0, 1)[0]
    assert describe_distributed(model) is None
    part = _key(model).part("options")
    assert part is not None
    assert "distributed" not in part.description


def test_a_replica_is_keyed_by_world_size_not_rank(world: None) -> None:
    assert describe_distributed(tp_models.replica(0, 1)[0]) == {"backend": "gloo", "world_size": 1}


def test_a_process_group_attribute_keys_the_rank(world: None) -> None:
    desc = describe_distributed(tp_models.tensor_parallel(0, 1)[0])
    assert desc is not None
    assert desc["rank"] == 0
    assert desc["reaches"]["module.group"] == {"group": "0", "ranks": [0]}
    # the forward reads funcol and dist through its globals: listed too
    assert any("reads funcol" in what for what in desc["reaches"])


def test_dtensor_parameters_are_described_by_placement(world: None) -> None:
    desc = describe_distributed(tp_models.dtensor_mlp(0, 1)[0])
    assert desc is not None
    assert desc["rank"] == 0
    up = desc["reaches"]["module.up.weight"]
    assert up["dtensor"] == ["S(0)"]
    assert up["mesh"] == {"mesh": [1], "dims": ["tp"], "ranks": [0]}
    assert up["local"] == [tp_models.FFN, tp_models.HIDDEN]
    assert desc["reaches"]["module.down.weight"]["dtensor"] == ["S(1)"]
    assert desc["reaches"]["module.up._forward_hooks"]["callable"].startswith("torch.distributed.")


def test_a_function_reading_dist_keys_the_rank(world: None) -> None:
    def shard_start(x: torch.Tensor) -> torch.Tensor:
        return x + dist.get_rank()

    desc = describe_distributed(shard_start)
    assert desc is not None
    assert desc["rank"] == 0


def test_the_net_refuses_a_replica_key_whose_trace_touched_distributed(world: None) -> None:
    replica_key = _key(tp_models.replica(0, 1)[0])
    rank_key = _key(tp_models.tensor_parallel(0, 1)[0])
    get_rank = {"name": "G['m'].dist.get_rank", "check": {"is": "function torch.distributed.get_rank 12"}}
    plain = {"name": "G['m'].torch", "check": {"is": "module torch"}}
    inlined = {"module": "torch.distributed._functional_collectives", "path": "x.py"}
    touched = builder._replica_touching_distributed
    assert touched(replica_key, [plain, get_rank], []) == "guard on G['m'].dist.get_rank"
    assert touched(replica_key, [plain], [inlined]) == "inlined torch.distributed._functional_collectives"
    assert touched(replica_key, [plain], []) is None
    assert touched(rank_key, [get_rank], [inlined]) is None  # the rank is keyed: nothing to refuse


def test_guards_on_and_below_a_process_group_are_rechecked_not_kept(world: None) -> None:
    """torch pickles a ProcessGroup as a placeholder: a kept guard on ``module.group`` or ``module.group.group_name``
    fails or rejects in the loading process, so the filter gives them a re-check instead."""

    def entry(name: str, guard_type: str, value: object) -> types.SimpleNamespace:
        return types.SimpleNamespace(
            name=name, guard_type=guard_type, value=value, has_value=True, is_global=False, derived_guard_types=()
        )

    group = dist.group.WORLD
    entries = [
        entry("module.group.group_name", "CONSTANT_MATCH", "0"),
        entry("module.group", "FAKE_SCRIPT_TYPE_MATCH", group),
        entry("module.groups", "TYPE_MATCH", []),  # a sibling whose name only starts like it
        entry("module.vocab_shard", "CONSTANT_MATCH", 16),
    ]
    guard_filter = compiler._SerializableGuardFilter(frozenset())
    assert guard_filter(entries) == [False, False, True, True]
