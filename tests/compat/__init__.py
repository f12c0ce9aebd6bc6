"""Tests of the forward fixes (src/torchkiln/compat/) and their round trips in separate processes."""
