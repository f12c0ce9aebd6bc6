"""One launch of a gloo world on CPU: every rank compiles (or loads) the models of tests/distributed/tp_models.py.

Run as ``python tests/distributed/launch.py CONFIG_JSON`` with ``{"world_size", "cache", "scratch", "models"}``.
The ranks are spawned with ``torch.multiprocessing`` (a fresh interpreter each), join one gloo process group on
127.0.0.1, and each gets its own empty Inductor cache under ``scratch/rank<r>``. Per model and rank the result has
``hit``, ``key``, ``artifact_bytes``, ``max_diff`` against the unsharded model run eagerly, the
``TorchkilnWarning`` messages and the error if one was raised. The last stdout line is ``TKRESULT <json>`` with
``{"ranks": [rank 0's results, rank 1's, ...]}``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_model(name: str, rank: int, world_size: int, cache: str) -> dict[str, Any]:
    import torchkiln
    from distributed.tp_models import MODELS

    build, example = MODELS[name]
    record: dict[str, Any] = {"model": name, "warnings": [], "error": None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sharded, full = build(rank, world_size)
            x = example()
            compiled = torchkiln.compile(sharded, (x,), cache=cache, name=f"dist-{name}")
            out = compiled(x)
            record.update(
                hit=compiled.hit,
                key=compiled.key,
                artifact_bytes=compiled.artifact_bytes,
                max_diff=float((out - full(x)).abs().max()),
                distributed=(compiled.header.cache_key.part("options").description.get("distributed"))
                if compiled.header
                else None,
            )
        except Exception as exc:
            record["error"] = {"type": type(exc).__name__, "message": f"{exc}\n{traceback.format_exc()[-3000:]}"}
    record["warnings"] = [str(w.message) for w in caught if issubclass(w.category, torchkiln.TorchkilnWarning)]
    return record


def _worker(rank: int, config: dict[str, Any], port: int) -> None:
    scratch = Path(config["scratch"]) / f"rank{rank}"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(scratch / "triton")
    import torch.distributed as dist

    world_size = int(config["world_size"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    torch.set_grad_enabled(False)
    results = [_run_model(name, rank, world_size, config["cache"]) for name in config["models"]]
    dist.barrier()
    dist.destroy_process_group()
    (scratch / "result.json").write_text(json.dumps(results))


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    world_size = int(config["world_size"])
    mp.start_processes(_worker, args=(config, _free_port()), nprocs=world_size, join=True, start_method="spawn")
    ranks = [json.loads((Path(config["scratch"]) / f"rank{r}" / "result.json").read_text()) for r in range(world_size)]
    sys.stdout.write("TKRESULT " + json.dumps({"ranks": ranks}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
