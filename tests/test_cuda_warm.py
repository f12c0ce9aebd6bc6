"""cuda_warm.py where CUDA is not in use: nothing starts (the GPU side: tests/gpu/test_gpu_cuda_warm.py)."""

from __future__ import annotations

import torch

from torchkiln import cuda_warm


def test_nothing_starts_for_a_cpu_artifact() -> None:
    assert cuda_warm.start("cpu") is None
    assert cuda_warm.start(None) is None


def test_nothing_starts_before_the_program_initialized_cuda() -> None:
    # The warm-up never initializes CUDA itself; here no program did (or no CUDA device exists).
    assert not torch.cuda.is_initialized()
    assert cuda_warm.start("cuda") is None
    assert not torch.cuda.is_initialized()


def test_the_device_of_a_call_is_its_first_cuda_input() -> None:
    class FakeTensor:  # what device_of reads of a tensor: its .device (no CUDA device needed for the rule)
        def __init__(self, device: str) -> None:
            self.device = torch.device(device)

    assert cuda_warm.device_of((FakeTensor("cpu"), FakeTensor("cuda:1")), {"x": FakeTensor("cuda:0")}) == 1
    assert cuda_warm.device_of((torch.ones(1),), {"mask": FakeTensor("cuda:2")}) == 2
    assert cuda_warm.device_of((torch.ones(1), 3), {}) is None
    assert cuda_warm.device_of((FakeTensor("cuda"),), {}) is None  # no index: the one-device rule decides
