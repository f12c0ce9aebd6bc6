"""torch.distributed objects in guards (compiler._SerializableGuardFilter).

In-process, a one-rank gloo world: fast. The multi-rank behaviour (ranks that must not share, replicas that must)
is tests/distributed/test_tensor_parallel.py (slow).
"""

from __future__ import annotations

import socket
import types
from collections.abc import Iterator

import pytest
import torch.distributed as dist

from torchkiln import compiler

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
