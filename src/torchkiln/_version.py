"""The one place the package version lives (hatch reads it; artifacts record it)."""

__version__ = "0.1.0"
