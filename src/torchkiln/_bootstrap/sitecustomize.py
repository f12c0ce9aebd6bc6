"""torchkiln's interpreter-start hook: on ``sys.path`` only where ``torchkiln run`` put this directory on
``PYTHONPATH`` (the pattern of ``ddtrace-run`` and ``opentelemetry-instrument``). It routes ``torch.compile``
through torchkiln when ``TORCHKILN_INSTALL`` is on, then runs the ``sitecustomize`` it shadows, if there is one.
It never stops the interpreter: a problem is one line on stderr.
"""

import importlib.util
import sys
from pathlib import Path


def _torchkiln_bootstrap() -> None:
    try:
        from torchkiln import _startup

        _startup.bootstrap()
    except Exception as exc:  # noqa: BLE001 - an interpreter must start even if torchkiln cannot route torch.compile in it
        sys.stderr.write(f"torchkiln: torch.compile is not routed through torchkiln in this process: {exc}\n")


def _run_shadowed_sitecustomize() -> None:
    here = Path(__file__).resolve().parent
    for entry in sys.path:
        if Path(entry or ".").resolve() == here:
            continue
        candidate = Path(entry or ".") / "sitecustomize.py"
        if candidate.is_file():
            spec = importlib.util.spec_from_file_location("_torchkiln_shadowed_sitecustomize", candidate)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            return


_torchkiln_bootstrap()
_run_shadowed_sitecustomize()
