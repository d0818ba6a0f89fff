"""The benchmarks of configs, of the block family and of inference modes, behind ``ann-seg
benchmark``, ``benchmark-blocks`` and ``benchmark-inference`` (docs/benchmarks.md)."""

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
