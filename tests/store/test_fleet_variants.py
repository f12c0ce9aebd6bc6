"""A rolling deploy over one bucket: two versions of an inlined helper coexist as variants, and loads never write.

Each step is a new machine (a fresh process, an empty local tier, empty Inductor caches) sharing one bucket on a
real S3-compatible server on 127.0.0.1. Versions a and b of ``tk_fleet_ops`` (which the model's forward inlines,
and which the key does not hash) alternate a, b, a, b, a: each version compiles once, then every step hits the
variant built from its own source, every output matches eager with that machine's source, and a step that hits
leaves the bucket exactly as it found it (no put, no delete: the load path never writes to a shared store).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import run_child
from torchkiln.store.remote import RemoteStore

from .s3server import S3Server, aws_env

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU backend needs g++"),
    pytest.mark.compat,
]

MODEL = """
import torch
from torch import nn

import tk_fleet_ops


class FleetNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return tk_fleet_ops.activate(self.fc(x))


def make():
    torch.manual_seed(0)
    return FleetNet().eval()


def inputs():
    return (torch.randn(4, 8, generator=torch.Generator().manual_seed(7)),)
"""

OPS = """
import torch


def activate(x):
    return torch.relu(x) * {factor}
"""


def _version(root: Path, name: str, factor: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "tk_fleet_model.py").write_text(MODEL)
    (folder / "tk_fleet_ops.py").write_text(OPS.format(factor=factor))
    return folder


def _bucket(url: str) -> dict[str, Any]:
    """Every object under the prefix with its size and modification time: what a write would change."""
    store = RemoteStore(url)
    return {e.key: (e.size, e.last_used) for e in store.list()}


def test_rolling_deploy_two_versions_share_one_bucket(s3_server: S3Server, s3_url: str, tmp_path: Path) -> None:
    versions = {"a": _version(tmp_path, "a", "2.0"), "b": _version(tmp_path, "b", "3.0")}
    config = {"cache": s3_url, "target": "tk_fleet_model:make", "inputs": "tk_fleet_model:inputs", "strict": False}
    env = aws_env(s3_server.endpoint)
    records = []
    for step, version in enumerate("ababa"):
        before = _bucket(s3_url)
        result = run_child(config, tmp_path / f"machine-{step}", extra_env=env, pythonpath=[versions[version]])
        (record,) = result["compiles"]
        assert record["error"] is None, record
        assert record["warnings"] == [], record
        assert record["max_diff"] <= 1e-5, record  # right for this machine's own source
        records.append(record)
        after = _bucket(s3_url)
        # A miss publishes its variant beside what is there; nothing that was there is replaced or deleted.
        assert {k: after.get(k) for k in before} == before, f"step {step} replaced or deleted an object"
        if step >= 2:
            assert record["hit"] is True, (step, version, record)
            assert _bucket(s3_url) == before, f"step {step} changed the bucket on a hit"
    assert [r["hit"] for r in records] == [False, False, True, True, True]
    key_a, key_b = records[0]["key"], records[1]["key"]
    assert key_b.startswith(key_a + ".")  # one key, two variants
    assert [r["key"] for r in records] == [key_a, key_b, key_a, key_b, key_a]
    assert set(_bucket(s3_url)) == {key_a, key_b}
