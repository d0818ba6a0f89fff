"""Benchmarks: configs (models, backbones, heads) and the non-local block family.

``tools/benchmark.py`` and ``tools/benchmark_blocks.py`` parse arguments and call
``run_benchmark`` / ``run_block_benchmark``; see docs/benchmark.md.
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
    build_segmentor,
    feature_shapes,
    parse_shapes,
    run_benchmark,
)

__all__ = [
    'PARTS', 'BenchmarkSettings', 'PeakMemoryTracker', 'TimingCase', 'benchmark_configs',
    'build_segmentor', 'feature_shapes', 'latency_stats', 'measure_peak_memory', 'parse_shapes',
    'run_benchmark', 'time_interleaved',
]
