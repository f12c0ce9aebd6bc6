"""Tiny sharded models for the torch.distributed tests, each with the unsharded model it must equal.

Every builder takes ``(rank, world_size)`` and returns ``(sharded, full)``: ``full`` holds the seeded weights of the
whole model, ``sharded`` this rank's slice of them. The classes live here, not in the launcher, because an artifact
is loaded in another process (a class defined in ``__main__`` cannot be found there).

- ``TensorParallelMLP``: a vocab-parallel embedding (its shard offset comes from ``dist.get_rank(group)``, which
  Dynamo bakes into the graph as a constant), a column-parallel and a row-parallel linear, each partial sum reduced
  with ``torch.distributed._functional_collectives.all_reduce`` inside the graph. The process group is an attribute.
- ``dtensor_mlp``: a plain MLP sharded by ``torch.distributed.tensor.parallel.parallelize_module``
  (``ColwiseParallel`` / ``RowwiseParallel`` over a 1-D ``DeviceMesh``): DTensor parameters.
- ``Replica``: a data-parallel replica, identical on every rank and reading nothing of torch.distributed.
- ``ShiftedByHelper``: reads the rank through a helper object (``RankShift``) that the key cannot see before
  tracing; torchkiln must not publish it as a replica (it runs compiled, correctly, and warns).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

VOCAB, HIDDEN, FFN = 32, 16, 64


def example_input() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(5))


def example_hidden() -> torch.Tensor:
    return torch.randn(2, 8, HIDDEN, generator=torch.Generator().manual_seed(6))


def _full_weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "embed": torch.randn(VOCAB, HIDDEN, generator=generator),
        "up": torch.randn(FFN, HIDDEN, generator=generator) / HIDDEN**0.5,
        "up_bias": torch.randn(FFN, generator=generator),
        "down": torch.randn(HIDDEN, FFN, generator=generator) / FFN**0.5,
        "down_bias": torch.randn(HIDDEN, generator=generator),
    }


class FullMLP(torch.nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.embed = torch.nn.Parameter(weights["embed"].clone())
        self.up = torch.nn.Parameter(weights["up"].clone())
        self.up_bias = torch.nn.Parameter(weights["up_bias"].clone())
        self.down = torch.nn.Parameter(weights["down"].clone())
        self.down_bias = torch.nn.Parameter(weights["down_bias"].clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.embedding(ids, self.embed)
        h = torch.nn.functional.gelu(h @ self.up.T + self.up_bias)
        out: torch.Tensor = h @ self.down.T + self.down_bias
        return out


class TensorParallelMLP(torch.nn.Module):
    """Megatron-style: embedding rows, ``up`` rows and ``down`` columns split over the ranks of ``group``."""

    def __init__(self, weights: dict[str, torch.Tensor], group: Any) -> None:
        super().__init__()
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        self.group = group
        self.vocab_shard, ffn_shard = VOCAB // size, FFN // size
        rows = slice(rank * self.vocab_shard, (rank + 1) * self.vocab_shard)
        cols = slice(rank * ffn_shard, (rank + 1) * ffn_shard)
        self.embed = torch.nn.Parameter(weights["embed"][rows].clone())
        self.up = torch.nn.Parameter(weights["up"][cols].clone())
        self.up_bias = torch.nn.Parameter(weights["up_bias"][cols].clone())
        self.down = torch.nn.Parameter(weights["down"][:, cols].clone())
        self.down_bias = torch.nn.Parameter(weights["down_bias"].clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        start = dist.get_rank(self.group) * self.vocab_shard  # a constant in the graph: differs per rank
        local = ids - start
        outside = (local < 0) | (local >= self.vocab_shard)
        h = torch.nn.functional.embedding(local.clamp(0, self.vocab_shard - 1), self.embed)
        h = funcol.all_reduce(h.masked_fill(outside.unsqueeze(-1), 0.0), "sum", self.group)
        h = torch.nn.functional.gelu(h @ self.up.T + self.up_bias)  # column parallel: this rank's FFN slice
        out = funcol.all_reduce(h @ self.down.T, "sum", self.group)  # row parallel: partial sums
        result: torch.Tensor = out + self.down_bias
        return result


def tensor_parallel(rank: int, world_size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    del rank, world_size
    weights = _full_weights()
    return TensorParallelMLP(weights, dist.group.WORLD).eval(), FullMLP(weights).eval()


class PlainMLP(torch.nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.up = torch.nn.Linear(HIDDEN, FFN)
        self.down = torch.nn.Linear(FFN, HIDDEN)
        with torch.no_grad():
            self.up.weight.copy_(weights["up"])
            self.up.bias.copy_(weights["up_bias"])
            self.down.weight.copy_(weights["down"])
            self.down.bias.copy_(weights["down_bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down(torch.nn.functional.gelu(self.up(x)))
        return out


def dtensor_mlp(rank: int, world_size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    del rank
    weights = _full_weights()
    mesh = init_device_mesh("cpu", (world_size,), mesh_dim_names=("tp",))
    sharded = parallelize_module(PlainMLP(weights), mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
    return sharded.eval(), PlainMLP(weights).eval()


class Replica(torch.nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.mlp = FullMLP(weights)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(ids) * 2.0
        return out


def replica(rank: int, world_size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    del rank, world_size
    weights = _full_weights()
    return Replica(weights).eval(), Replica(weights).eval()


class RankShift:
    """A plain helper object: the key sees an attribute of an unknown class, the trace sees ``dist.get_rank()``."""

    def shift(self) -> int:
        return dist.get_rank() + 1


class ShiftedByHelper(torch.nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.mlp = FullMLP(weights)
        self.helper = RankShift()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(ids) + self.helper.shift()
        return out


class ExpectedShift(torch.nn.Module):
    """What ``ShiftedByHelper`` must give on ``rank``: the unsharded model plus ``rank + 1``."""

    def __init__(self, weights: dict[str, torch.Tensor], rank: int) -> None:
        super().__init__()
        self.mlp = FullMLP(weights)
        self.rank = rank

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(ids) + (self.rank + 1)
        return out


def shifted_by_helper(rank: int, world_size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    del world_size
    weights = _full_weights()
    return ShiftedByHelper(weights).eval(), ExpectedShift(weights, rank).eval()


#: name -> (builder, example input)
MODELS = {
    "tensor_parallel": (tensor_parallel, example_input),
    "dtensor": (dtensor_mlp, example_hidden),
    "replica": (replica, example_input),
    "shifted_by_helper": (shifted_by_helper, example_input),
}
