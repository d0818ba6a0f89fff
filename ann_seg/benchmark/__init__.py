"""The config-driven benchmarks: configs (models, backbones, heads), the block family and
inference modes. ``ann-seg benchmark``, ``benchmark-blocks`` and ``benchmark-inference`` parse
arguments and call ``run_benchmark``, ``run_block_benchmark``, ``compare_inference_modes``; see
docs/benchmarks.md. The head study and folder-throughput harnesses live in the repository's
``research/``.
"""

from .measure import (
    PeakMemoryTracker,
    TimingCase,
    latency_stats,
    measure_peak_memory,
    time_interleaved,
)
from .models import (
    PARTS,
    BenchmarkSettings,
    benchmark_configs,
    build_benchmark_model,
    feature_shapes,
    parse_shapes,
    run_benchmark,
)

__all__ = [
    "PARTS",
    "BenchmarkSettings",
    "PeakMemoryTracker",
    "TimingCase",
    "benchmark_configs",
    "build_benchmark_model",
    "feature_shapes",
    "latency_stats",
    "measure_peak_memory",
    "parse_shapes",
    "run_benchmark",
    "time_interleaved",
]
