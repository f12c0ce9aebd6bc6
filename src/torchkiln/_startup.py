"""Route ``torch.compile`` through torchkiln from interpreter start, without importing torch before the program does.

``torchkiln run`` (launch.py) calls ``activate()`` in its own process and puts ``_bootstrap/`` on ``PYTHONPATH``
with ``TORCHKILN_INSTALL=1``, so that every Python process the program starts (multiprocessing workers, a server's
engine processes) runs ``_bootstrap/sitecustomize.py``, which calls ``bootstrap()``. Nothing here imports torch: when
torch is not imported yet, a one-shot import hook installs the routing right after ``import torch`` finishes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["BOOTSTRAP_DIR", "activate", "bootstrap"]

#: The directory ``torchkiln run`` puts first on ``PYTHONPATH`` (it holds only ``sitecustomize.py``).
BOOTSTRAP_DIR = Path(__file__).resolve().parent / "_bootstrap"


def bootstrap() -> None:
    """The interpreter-start hook: route ``torch.compile`` if ``TORCHKILN_INSTALL`` is on (a bad value is a
    ``ConfigError``, which the hook reports without stopping the interpreter)."""
    from torchkiln import settings

    if settings.install_requested():
        activate()


def activate() -> None:
    """``torchkiln.install()`` now if torch is imported, else right after ``import torch`` (idempotent)."""
    if "torch" in sys.modules:
        _install()
    elif not any(isinstance(finder, _AfterTorchImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterTorchImport())


def _install() -> None:
    from torchkiln import routing

    routing.install()


class _AfterTorchImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for ``torch`` it asks the other finders, then runs ``install()`` once torch's own module
    has executed (the loader and ``torch.__loader__`` stay torch's)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)  # one shot, and not asked again by the lookup below
        spec = importlib.util.find_spec("torch")
        loader: Any = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_install(module: ModuleType) -> None:
            exec_module(module)
            try:
                _install()
            except Exception as exc:  # noqa: BLE001 - `import torch` must not fail because torchkiln cannot route torch.compile
                sys.stderr.write(f"torchkiln: torch.compile is not routed through torchkiln: {exc}\n")

        loader.exec_module = exec_then_install
        return spec
