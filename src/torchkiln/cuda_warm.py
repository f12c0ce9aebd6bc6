"""cuBLAS's first use, paid on a background thread while a CUDA hit loads, not by the loaded graph's first call.

Why: the first matrix product of a CUDA process loads and initializes cuBLAS (and cuBLASLt): 85 ms of the main
thread's first ``addmm`` on an H100 (torch 2.11, ``benchmarks/first_matmul_probe.py``), 3 ms once another thread
has run one small product. A loaded GPU graph's first call took 0.12-0.14 s against ~3 ms steady (GPT-2, H100 and
H200), most of it that. The library and its kernels are per process; only the handle is per thread, and creating
it is what is left (the 3 ms).

How: :func:`start` runs one tiny product per common floating dtype on a new thread, once per process, only where
the program has initialized CUDA itself (the thread never initializes CUDA: that would pick the device before the
program does and could race its own initialization), and only on a device the program uses: the device of the
call's CUDA inputs, or the one device there is. It never touches another GPU (a CUDA context costs hundreds of MB
on the GPU it is made on: one rank per GPU must not make one on GPU 0).
Torch releases the GIL inside each product, so the work overlaps the load's imports and deserialization; nothing
it does imports a Python module (tests/gpu/test_gpu_cuda_warm.py). Public torch API only: no probe;
``TORCHKILN_CUDA_WARM=0`` turns it off. It is a speed-up only: any failure is logged at debug and ignored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from torchkiln import settings

__all__ = ["WARM_DTYPES", "device_of", "start"]

log = logging.getLogger("torchkiln")

#: The dtypes whose GEMM kernels the warm-up touches (cuBLAS's initialization itself is dtype-independent).
WARM_DTYPES = ("float16", "bfloat16", "float32")

_lock = threading.Lock()
_started: threading.Thread | None = None
#: Seconds the warm-up took on its thread (None until it ends); for benchmarks and tests.
seconds: float | None = None


def start(
    device_type: str | None, call: tuple[Sequence[Any], Mapping[str, Any]] | None = None
) -> threading.Thread | None:
    """Start the warm-up for a ``device_type`` artifact about to load, on the device of ``call``'s CUDA inputs
    (positional, keyword; none: the only device); the thread, or None when nothing starts (not CUDA, already
    started in this process, off, CUDA not initialized by the program, or no device known)."""
    global _started
    # The cheap refusals first: every load of a process comes through here, and only its first CUDA one warms.
    if device_type != "cuda" or _started is not None or not settings.cuda_warm_requested():
        return None
    import torch

    if not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        return None
    device = None if call is None else device_of(*call)
    if device is None:
        if torch.cuda.device_count() != 1:
            return None
        device = 0
    with _lock:
        if _started is not None:
            return None
        # Not a daemon: it never outlives its few products, and a thread killed inside CUDA at exit could crash.
        _started = threading.Thread(target=_warm, args=(device,), name="torchkiln-cuda-warm")
        _started.start()
        return _started


def _warm(device: int) -> None:
    global seconds
    start_time = time.perf_counter()
    try:
        import torch

        for name in WARM_DTYPES:
            dtype = getattr(torch, name)
            a = torch.ones((8, 8), device=torch.device("cuda", device), dtype=dtype)
            torch.mm(a, a)
        torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - a warm-up: the first call pays cuBLAS's start instead
        log.debug("torchkiln: the cuBLAS warm-up failed (%s: %s)", type(exc).__name__, exc)
    finally:
        seconds = time.perf_counter() - start_time


def device_of(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    """The index of the first CUDA tensor among a call's top-level inputs (None when there is none)."""
    for value in (*args, *kwargs.values()):
        device = getattr(value, "device", None)
        if getattr(device, "type", None) == "cuda":
            index = getattr(device, "index", None)
            return index if isinstance(index, int) else None
    return None
