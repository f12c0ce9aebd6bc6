"""Store tests: contract.py is the suite every backend mixes in (a package so it imports as ``.contract``)."""
