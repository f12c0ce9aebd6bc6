"""``torchkiln run [--cache URL] (SCRIPT | -m MODULE) [ARGS...]``: run a program with ``torch.compile`` routed through
torchkiln (``torchkiln.install()``), for code the user cannot edit.

The program runs in this process (``runpy``, as ``python SCRIPT`` or ``python -m MODULE`` would: ``sys.argv``,
``sys.path[0]`` and ``__main__`` are the program's). The routing is installed when the program imports torch, and
the environment carries it to every Python process the program starts: ``TORCHKILN_INSTALL=1`` and
``torchkiln/_bootstrap`` first on ``PYTHONPATH``, whose ``sitecustomize.py`` installs it at interpreter start
(``_startup.py``). ``--cache`` sets ``TORCHKILN_CACHE`` for all of them.

Why this and not a ``.pth`` file: a ``.pth`` hook runs in every interpreter of the environment (pip, linters, every
tool), must be installed into site-packages by the wheel (editable installs differ), and cannot be scoped to one
program; ``PYTHONPATH`` reaches exactly the program and its children, and nothing else.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path
from typing import Any

from torchkiln import _startup, settings

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a Python program with torch.compile served by torchkiln",
        description="Run SCRIPT (or -m MODULE) with torch.compile(..., fullgraph=True) calls served from the torchkiln "
        "cache, in this process and in the Python processes it starts. Other torch.compile calls go to torch.",
    )
    parser.add_argument("--cache", metavar="URL", default=None, help="the cache (sets TORCHKILN_CACHE)")
    parser.add_argument("-m", dest="module", action="store_true", help="run a module, as python -m: -m MODULE [ARGS]")
    parser.add_argument("program", nargs=argparse.REMAINDER, help="SCRIPT [ARGS...] (with -m: MODULE [ARGS...])")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from torchkiln.cli import EXIT_USAGE

    program = list(args.program)
    if not program:
        sys.stderr.write("torchkiln run: error: name a SCRIPT or -m MODULE\n")
        return EXIT_USAGE
    if args.module:
        return run([], module=program[0], cache=args.cache, argv=program[1:])
    return run(program, cache=args.cache)


def run(
    program: list[str], *, module: str | None = None, cache: str | None = None, argv: list[str] | None = None
) -> int:
    """Run ``program`` (``[SCRIPT, *ARGS]``) or ``module`` (with ``argv``) with the routing on; its exit code."""
    if cache is not None:
        os.environ[settings.ENV_CACHE] = cache
    os.environ[settings.ENV_INSTALL] = "1"
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(_startup.BOOTSTRAP_DIR), *([path] if path else [])])
    settings.current()  # a bad TORCHKILN_* value fails here, before the program starts
    _startup.activate()
    try:
        if module is not None:
            sys.argv = [module, *(argv or [])]
            sys.path[0] = str(Path.cwd())
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            script = Path(program[0]).resolve()
            sys.argv = [program[0], *program[1:]]
            sys.path[0] = str(script.parent)
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        sys.stderr.write(f"{code}\n")
        return 1
    return 0
