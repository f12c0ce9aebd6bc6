"""The benchmark harness behind ``torchkiln bench`` and ``torchkiln demo``.

``runner`` starts one fresh process per phase (``child``) with the caches that phase calls for, ``summary``
turns the records into medians, same-run ratios and target verdicts, ``report`` renders tables and the chart,
``models`` builds the benchmark models. Nothing here imports torch in the calling process.
"""

from __future__ import annotations

from torchkiln.bench.models import MODELS
from torchkiln.bench.runner import PHASE_TITLES, PHASES, BenchConfig, needed_phases, run_bench

__all__ = ["MODELS", "PHASES", "PHASE_TITLES", "BenchConfig", "needed_phases", "run_bench"]
