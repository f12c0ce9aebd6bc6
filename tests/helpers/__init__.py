"""Test helpers: importable model/function modules and the scripts that tests run in fresh subprocesses.

Models live in importable modules (never in a test's ``__main__``) so a process other than the one that compiled
them can load their artifacts; ``child.py`` is the one subprocess entry point the round-trip tests share.
"""
