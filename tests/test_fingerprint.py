"""Fingerprint: what this process is, its JSON round trip, and when an artifact cannot run here."""

from __future__ import annotations

import dataclasses
import json
import platform
import sys

import pytest
import torch

from torchkiln import artifact
from torchkiln.errors import IncompatibleArtifactError
from torchkiln.fingerprint import Fingerprint


@pytest.fixture(scope="module")
def here() -> Fingerprint:
    return Fingerprint.current()


def test_current_describes_this_process(here: Fingerprint) -> None:
    assert here.python_version == platform.python_version()
    assert here.python_implementation == sys.implementation.name
    assert here.torch_version == torch.__version__
    assert here.torch_git_version == torch.version.git_version
    assert here.cuda_version == torch.version.cuda
    assert here.device_type == "cpu"
    assert here.device_capability is None
    assert here.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert here.machine == platform.machine()
    assert here.format_version == artifact.FORMAT_VERSION
    if sys.platform == "linux":
        assert here.cpu_isa, "Linux has /proc/cpuinfo, so the ISA list must be filled"
        assert list(here.cpu_isa) == sorted(set(here.cpu_isa))
        if platform.machine() == "x86_64":
            assert "sse2" in here.cpu_isa  # every x86_64 CPU has it
            assert "hypervisor" not in here.cpu_isa  # host quirks are filtered out
    assert Fingerprint.current() is Fingerprint.current()  # cached: the hit path calls it every time


# Fingerprint.current() importing no compiler is checked in a fresh process by
# tests/test_cache_key.py::test_same_key_in_a_fresh_process_with_another_hash_seed_and_no_compiler_import
# (one subprocess, one torch import, for both properties).


def test_json_round_trip(here: Fingerprint) -> None:
    data = json.loads(json.dumps(here.to_dict()))
    assert Fingerprint.from_dict(data) == here
    assert Fingerprint.from_dict(data).to_dict() == here.to_dict()


def test_unknown_keys_are_kept_and_missing_keys_read_as_unknown(here: Fingerprint) -> None:
    newer = {**here.to_dict(), "npu_driver": "7.1"}
    fp = Fingerprint.from_dict(newer)
    assert fp == here  # extra keys are never compared
    assert fp.to_dict()["npu_driver"] == "7.1"  # but re-encoding a header keeps them

    old = Fingerprint.from_dict({"torch_version": "2.10.0"})
    assert old.python_version == "unknown"
    assert old.cpu_isa is None
    assert old.format_version == 0
    reasons = here.incompatibilities(old)
    assert any(r.startswith("torchkiln artifact format 0 (artifact)") for r in reasons)


def test_identical_is_compatible(here: Fingerprint) -> None:
    assert here.incompatibilities(dataclasses.replace(here)) == []
    here.check_compatible(dataclasses.replace(here))


def test_each_difference_is_a_readable_reason(here: Fingerprint) -> None:
    other = dataclasses.replace(
        here, torch_version="2.11.0", python_version="3.10.1", torch_git_version="abc", machine="aarch64"
    )
    reasons = here.incompatibilities(other)
    assert f"torch 2.11.0 (artifact) != {here.torch_version} (here)" in reasons
    assert f"python 3.10.1 (artifact) != {here.python_version} (here)" in reasons
    assert any(r.startswith("torch git version abc") for r in reasons)
    assert any(r.startswith("machine aarch64") for r in reasons)
    assert len(reasons) == 4


def test_cpu_isa_superset_runs_and_subset_does_not(here: Fingerprint) -> None:
    # Every field that matters is set explicitly: the host's own CPU (AMD or Intel, with or without AVX-512)
    # must not decide the outcome.
    base = dataclasses.replace(here, cpu_capability="AVX2", cpu_isa=("avx", "avx2", "sse2"))
    fewer = dataclasses.replace(base, cpu_isa=("sse2",))
    more = dataclasses.replace(base, cpu_isa=("amx_tile", "avx", "avx2", "avx512f", "sse2"))
    assert base.incompatibilities(fewer) == []  # built with less than this CPU has: runs
    reasons = base.incompatibilities(more)
    assert len(reasons) == 1
    assert "lacks" in reasons[0]
    assert "amx_tile, avx512f" in reasons[0]
    assert base.incompatibilities(dataclasses.replace(base, cpu_capability="AVX512"))


def test_cpu_isa_is_validated_on_load_not_keyed(here: Fingerprint) -> None:
    # One rule: the key carries the coarse cpu_capability, the load checks the extension list (superset runs).
    isa_a = dataclasses.replace(here, cpu_isa=("avx", "sse2"))
    isa_b = dataclasses.replace(here, cpu_isa=("avx", "avx512f", "sse2"))
    assert isa_a.key_fields() == isa_b.key_fields()
    assert "cpu_isa" not in isa_a.key_fields()
    assert isa_a.key_fields()["cpu_capability"] == here.cpu_capability
    assert isa_b.incompatibilities(isa_a) == []
    assert isa_a.incompatibilities(isa_b)


def test_gpu_fields_matter_only_for_gpu_targets(here: Fingerprint) -> None:
    cpu_other = dataclasses.replace(here, triton_version="3.5.0", cuda_version="13.0")
    assert here.incompatibilities(cpu_other) == []  # CPU kernels do not use triton or the CUDA toolkit

    gpu = dataclasses.replace(
        here, device_type="cuda", device_name="NVIDIA H100 80GB HBM3", device_capability="9.0", cpu_isa=None
    )
    gpu_other = dataclasses.replace(
        gpu, device_name="NVIDIA A100-SXM4-80GB", device_capability="8.0", triton_version="3.5.0"
    )
    reasons = gpu.incompatibilities(gpu_other)
    assert "device capability 8.0 (artifact) != 9.0 (here)" in reasons
    assert "device NVIDIA A100-SXM4-80GB (artifact) != NVIDIA H100 80GB HBM3 (here)" in reasons
    assert any(r.startswith("triton 3.5.0") for r in reasons)
    assert "device type cuda (artifact) != cpu (here)" in here.incompatibilities(gpu)


def test_check_compatible_raises_typed_error_with_every_reason(here: Fingerprint) -> None:
    other = dataclasses.replace(here, torch_version="2.11.0", python_implementation="pypy")
    with pytest.raises(IncompatibleArtifactError) as info:
        here.check_compatible(other, where="/cache/v1/m-abc.tkln")
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.where == "/cache/v1/m-abc.tkln"
    assert "torch 2.11.0 (artifact)" in err.what
    assert "python implementation pypy (artifact)" in err.what
    assert err.fix
    assert "How to fix" in str(err)
