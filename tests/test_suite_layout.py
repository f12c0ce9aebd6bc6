"""The suite's own layout: its packages never shadow an installed module.

pytest puts ``tests/`` on ``sys.path`` (``from helpers import ...``), so a test package is importable by its bare
name. transformers 5.25 started to require the ``kernels`` distribution and import it at module level; the suite's
then ``tests/kernels`` package answered that import and every transformers model failed to import. Any installed
top-level module is a name a dependency may import, so no test package may take one.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

TESTS = Path(__file__).parent


def test_no_test_package_shadows_an_installed_module() -> None:
    installed = importlib.metadata.packages_distributions()
    packages = sorted(p.name for p in TESTS.iterdir() if (p / "__init__.py").is_file())
    assert packages, "tests/ holds no package: this check would pass vacuously"
    shadowing = {name: installed[name] for name in packages if name in installed}
    assert not shadowing, (
        f"test packages under {TESTS} shadow installed modules {shadowing}: a dependency importing one of them "
        "would get the test package instead; rename the test package (e.g. tests/kernels -> tests/kernel_bundle)"
    )
