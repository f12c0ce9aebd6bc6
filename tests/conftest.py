"""Suite-wide pytest hooks: how ``pytest-xdist`` splits the suite between its workers (Makefile: ``JOBS``).

xdist runs each *scope* on one worker; torchkiln's default is the test module, because most modules share
module-scoped fixtures that compile in a child process (their cost would be paid once per worker otherwise).
The modules listed below are many independent cases behind one cheap baseline fixture: each case is its own
scope, so both workers share them (the baseline then compiles once per worker, not once per case).
"""

from __future__ import annotations

import pytest

#: Modules whose tests are spread over the workers one by one (each compiles and loads in its own processes).
SPLIT_PER_TEST = ("tests/test_correctness.py",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scope(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return nodeid if module in SPLIT_PER_TEST else module
