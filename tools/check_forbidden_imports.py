"""Forbid pickle-family imports outside an explicit allow-list, and torch's private names outside their owners.

This module owns the rule "only the files that must unpickle may import an unpickler": torchkiln verifies an
artifact's lengths and hashes before it hands any byte to an unpickler, and that promise only holds if the
(un)pickling happens in the few places that do the verification first. A stray ``pickle.loads`` anywhere else
would turn a corrupt or planted cache entry into arbitrary code execution, so every import of ``pickle``,
``_pickle``, ``cloudpickle`` or ``dill`` (and their submodules) is an error unless the file is on ALLOW_LIST
(or TEST_ALLOW_LIST) below, with the reason it needs one.

The second rule: inside src/ only the paths in TORCH_PRIVATE_ALLOWED (compiler.py, compat/, inductor_cache/) may
import a private torch module (``torch._dynamo``, ``torch.utils._pytree``) or read a private torch attribute
(``torch._C.x``). Private names move between torch releases; keeping them in a few owners, each behind a probe,
makes a torch upgrade break one known place instead of anywhere.

Every import form is found through ``ast`` (a regex misses ``import os, pickle`` and finds commented-out
code): ``import``, ``from ... import``, imports nested in functions or ``if``/``try`` blocks, and
``__import__("pickle")`` / ``importlib.import_module("pickle")`` with a literal module name.

Usage: ``python tools/check_forbidden_imports.py [PATHS...]``. Without paths it checks every ``*.py`` under
src/ tests/ tools/ benchmarks/ fuzz/ of the repository this script lives in. Exit codes: 0 clean (no
output), 1 forbidden imports or unparsable files (one line each), 2 usage error (e.g. a path that does not
exist). Standard library only, so it runs before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Top-level module names whose import is forbidden; ``dill.source`` counts as ``dill``.
#: ``marshal`` too: it loads code objects, which run when called (the template memo stores Jinja's compiled templates).
FORBIDDEN: frozenset[str] = frozenset({"pickle", "_pickle", "cloudpickle", "dill", "marshal"})

#: Repo-relative paths (POSIX separators) of source files allowed to import FORBIDDEN modules -> why.
ALLOW_LIST: dict[str, str] = {
    "src/torchkiln/compat/fixes/builtins_runtime_env.py": (
        "tests picklability with pickle.dumps before it keeps a value, as the upstream fix does"
    ),
    "src/torchkiln/compat/fixes/import_source_reload.py": (
        "its probe round-trips an ImportSource it built itself through pickle, as a load unpickles a guard state"
    ),
    "src/torchkiln/compat/fixes/wrapped_functions.py": (
        "its probe pickles a function it defined itself with torch's AOTCompilePickler and reads PicklingError"
    ),
    "src/torchkiln/compat/fixes/self_pickling_local_modules.py": (
        "reads pickle.DEFAULT_PROTOCOL to ask a module for the reduction torch's guard-state pickler will use; "
        "it pickles and unpickles nothing"
    ),
    "src/torchkiln/compiler.py": (
        "the one module that hands verified bytes to torch's unpickler; needs a pickler subclass "
        "for the module-globals fix"
    ),
    "src/torchkiln/inductor_cache/template_memo.py": (
        "marshal: Jinja's compiled templates (code objects, as Jinja's own BytecodeCache keeps them), read back only "
        "from a private, checksummed local memo file of this Jinja install and Python"
    ),
}

#: torch's private names (``torch._dynamo``, ``torch._inductor.config``, ``torch.utils._pytree``, ``torch._C``) change
#: between releases without notice. Inside the package only these paths may use them (DESIGN.md section 1), each
#: behind a probe or a version check, so that a torch that moves one breaks one known place. Prefixes of
#: repo-relative paths -> why.
TORCH_PRIVATE_ALLOWED: dict[str, str] = {
    "src/torchkiln/compiler.py": "the one module that calls aot_compile, save and load and filters guards",
    "src/torchkiln/inductor_options.py": "a mode's Inductor options, checked against torch._inductor.config",
    "src/torchkiln/closure_binding.py": "rebinds a loaded function's runtime_env.closure (torch's _artifacts)",
    "src/torchkiln/compat/": "forward fixes patch torch's internals by design, each behind a probe",
    "src/torchkiln/inductor_cache/": "the Inductor/Triton cache scopes and the install memo of torch_key",
    "src/torchkiln/bench/child.py": "benchmarks torch's own baselines (AOTInductor packages, enable_aot_compile)",
}

#: The tree the torch-private rule applies to: tests, tools and benchmarks may probe internals freely.
TORCH_PRIVATE_SCOPE = "src/"

TORCH_TIP = (
    "move the use into torchkiln.compiler, torchkiln.inductor_cache or a compat fix (behind a probe), or add "
    "the path to TORCH_PRIVATE_ALLOWED in tools/check_forbidden_imports.py with a reason"
)

#: Test files that must plant pickles (e.g. to prove a malicious payload is refused) -> why. Kept separate
#: so a reviewer sees at a glance which exemptions are test-only; entries must live under tests/.
TEST_ALLOW_LIST: dict[str, str] = {
    "tests/test_routing.py": (
        "pickles a CompiledModule / CompiledFunction and loads it back in the same test, as a user's pickle.dumps "
        "of a model would: it proves a pickle carries no compiled code"
    ),
}

#: Directories scanned when no path is given, relative to the repository root.
DEFAULT_DIRS: tuple[str, ...] = ("src", "tests", "tools", "benchmarks", "fuzz")

#: The repository root: this file lives in <root>/tools/.
REPO_ROOT: Path = Path(__file__).resolve().parent.parent

TIP = (
    "route (un)pickling through torchkiln.compiler (or the compat fix module that needs it), "
    "or add this file to ALLOW_LIST in tools/check_forbidden_imports.py with a reason"
)

#: Callables that import a module named by their first argument: ``__import__``, ``builtins.__import__``,
#: ``importlib.import_module``, ``importlib.__import__`` and aliases such as ``il.import_module``.
_IMPORT_CALLS = frozenset({"__import__", "import_module"})


@dataclass(frozen=True)
class Finding:
    """One reportable problem: a forbidden import or a file that could not be checked."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def is_forbidden(module: str) -> bool:
    """True if importing ``module`` (a dotted absolute name) loads a forbidden package."""
    return module.split(".", 1)[0] in FORBIDDEN


def _called_name(func: ast.expr) -> str:
    """The last name of a called expression: ``f`` for ``f(...)`` and ``a.b.f(...)``, else ""."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _literal_module_arg(call: ast.Call) -> str | None:
    """The module name an import call receives as a string literal, else None (dynamic names are
    out of reach for a static check)."""
    node: ast.expr | None = call.args[0] if call.args else None
    if node is None:
        node = next((kw.value for kw in call.keywords if kw.arg == "name"), None)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Yield (line, absolute module name) for every import the tree performs, at any nesting depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            # Relative imports (level > 0) name a sibling module of ours, never the stdlib pickle.
            if node.level == 0 and node.module:
                yield node.lineno, node.module
        elif isinstance(node, ast.Call) and _called_name(node.func) in _IMPORT_CALLS:
            module = _literal_module_arg(node)
            # A leading dot is relative to a ``package=`` argument: a module of ours, as above.
            if module is not None and not module.startswith("."):
                yield node.lineno, module


def find_forbidden(source: str | bytes, filename: str = "<string>") -> list[tuple[int, str]]:
    """(line, module) for every forbidden import in ``source``, sorted by line.

    Raises SyntaxError or ValueError (null bytes) when ``source`` does not parse.
    """
    tree = ast.parse(source, filename=filename)
    return sorted((line, module) for line, module in _imported_modules(tree) if is_forbidden(module))


def _is_private(segment: str) -> bool:
    return segment.startswith("_") and not (segment.startswith("__") and segment.endswith("__"))


def _torch_private_module(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "torch" and any(_is_private(p) for p in parts[1:])


def _attribute_chain(node: ast.Attribute) -> list[str] | None:
    """``["torch", "_dynamo", "config"]`` for ``torch._dynamo.config``; None if the root is not a plain name."""
    names: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        names.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        return None
    names.append(current.id)
    return names[::-1]


def find_torch_private(source: str | bytes, filename: str = "<string>") -> list[tuple[int, str]]:
    """(line, name) for every import of a private torch module and every ``torch._x`` attribute, sorted."""
    tree = ast.parse(source, filename=filename)
    hits: set[tuple[int, str]] = set()
    for line, module in _imported_modules(tree):
        if _torch_private_module(module):
            hits.add((line, module))
    # Only the outermost attribute of a chain is reported (torch._C._get_tracing_state once, not also torch._C).
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "torch":
            hits.update((node.lineno, f"torch.{a.name}") for a in node.names if _is_private(a.name))
        elif isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _attribute_chain(node)
            if chain and chain[0] == "torch" and any(_is_private(p) for p in chain[1:]):
                hits.add((node.lineno, ".".join(chain)))
    return sorted(hits)


def torch_private_allowed(rel_path: str | None) -> bool:
    """Outside src/ always; inside it only on TORCH_PRIVATE_ALLOWED paths."""
    if rel_path is None or not rel_path.startswith(TORCH_PRIVATE_SCOPE):
        return True
    return any(rel_path.startswith(prefix) for prefix in TORCH_PRIVATE_ALLOWED)


def repo_relative(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root`` with POSIX separators, or None if it lies outside ``root``."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def allowed_reason(rel_path: str | None) -> str | None:
    """Why the file at repo-relative ``rel_path`` may import FORBIDDEN modules, or None if it may not."""
    if rel_path is None:
        return None
    return ALLOW_LIST.get(rel_path) or TEST_ALLOW_LIST.get(rel_path)


def check_file(path: Path, root: Path = REPO_ROOT) -> list[Finding]:
    """Findings for one file; an allow-listed file is still parsed so a syntax error is never hidden."""
    rel = repo_relative(path, root)
    shown = rel if rel is not None else str(path)
    try:
        source = path.read_bytes()
    except OSError as exc:
        return [Finding(shown, 0, f"cannot read file: {exc.strerror or exc}")]
    try:
        hits = find_forbidden(source, filename=shown)
    except SyntaxError as exc:
        return [Finding(shown, exc.lineno or 0, f"syntax error: {exc.msg}; cannot check its imports")]
    except ValueError as exc:  # Python 3.11 reports null bytes as ValueError, not SyntaxError.
        return [Finding(shown, 0, f"cannot parse: {exc}; cannot check its imports")]
    findings = []
    if allowed_reason(rel) is None:
        findings += [Finding(shown, line, f"forbidden import: {module}. TIP: {TIP}") for line, module in hits]
    if not torch_private_allowed(rel):
        findings += [
            Finding(shown, line, f"private torch name outside its owners: {name}. TIP: {TORCH_TIP}")
            for line, name in find_torch_private(source, filename=shown)
        ]
    return sorted(findings, key=lambda f: f.line)


def iter_python_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files to check: each file as given, and every ``*.py`` under each directory, in sorted order.

    Hidden directories (``.venv``, ``.git``) and ``__pycache__`` are skipped: they hold no code of ours.
    """
    for path in paths:
        if not path.is_dir():
            yield path
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            for filename in sorted(filenames):
                if filename.endswith(".py"):
                    yield Path(dirpath) / filename


def check_paths(paths: Iterable[Path], root: Path = REPO_ROOT) -> list[Finding]:
    """Findings for every Python file reachable from ``paths``."""
    findings: list[Finding] = []
    for file in iter_python_files(paths):
        findings.extend(check_file(file, root))
    return findings


def default_paths(root: Path = REPO_ROOT) -> list[Path]:
    """The DEFAULT_DIRS that exist under ``root`` (fuzz/ or benchmarks/ may not exist yet)."""
    return [root / name for name in DEFAULT_DIRS if (root / name).is_dir()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="check_forbidden_imports.py",
        description=(
            f"Fail if any file outside the allow-list imports {', '.join(sorted(FORBIDDEN))}. "
            f"Without PATHS, checks every *.py under {', '.join(d + '/' for d in DEFAULT_DIRS)} "
            "of the repository."
        ),
    )
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATHS", help="files or directories to check")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    paths: list[Path] = args.paths or default_paths()
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        parser.error(f"no such file or directory: {', '.join(missing)}")  # exits 2 with the usage line
    findings = check_paths(paths)
    for finding in findings:
        print(finding)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
