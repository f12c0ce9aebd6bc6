"""Bundles for the kernel tests: ones written by torchkiln's own encoder, and hand-made zips it would never write."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from pathlib import Path
from typing import Any

from torchkiln import kernels


def fake_bundle(files: dict[str, bytes], **fields: Any) -> bytes:
    """``kernels.bundle_of`` a recording of ``files`` (``fields`` override its other attributes)."""
    rec = kernels.KernelRecording(private_dir=Path("/nonexistent"), files=files, torch_version="t")
    for key, value in fields.items():
        setattr(rec, key, value)
    return kernels.bundle_of(rec)


def raw_zip(entries: list[tuple[str, bytes]], *, mode: int = stat.S_IFREG | 0o644, manifest: Any = None) -> bytes:
    """A zip with MANIFEST.json first (by default a minimal, correct one for ``entries``) and ``entries`` after it,
    stored uncompressed with ``mode``: what a hand-made or hostile bundle looks like."""
    if manifest is None:
        manifest = {
            "format": kernels.BUNDLE_FORMAT,
            "files": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in entries},
        }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(kernels.MANIFEST, json.dumps(manifest))
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()
