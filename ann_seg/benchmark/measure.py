"""Timing and peak-memory measurement shared by the benchmarks (method: docs/benchmarks.md).

* Time: wall clock around one step (synchronised on CUDA); cases are timed *interleaved*, the
  order rotated by one case per round, so slow phases of a noisy machine hit every case alike.
* Peak memory: the peak of live tensor bytes during one step above the level at its start.
  CUDA: ``max_memory_allocated``; CPU: the running sum of ``torch.profiler``'s allocator
  events (temporaries inside kernels included). Measured in a step of its own.
"""

import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from ann_seg.io import Progress
from ann_seg.layers.compat import event_start_ns

MIB = float(1 << 20)


def synchronize(device: str) -> None:
    """Wait for queued kernels (CUDA); a no-op on the CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


class PeakMemoryTracker:
    """Context manager: ``peak_bytes`` is the peak of live tensor bytes allocated inside it,
    above the level at entry (see the module docstring for the method per device).

    Example::

        with PeakMemoryTracker('cpu') as tracker:
            x = torch.empty(16 << 20, dtype=torch.uint8)
            del x
        tracker.peak_bytes  # 16 MiB (16777216)
    """

    def __init__(self, device: str = "cpu"):
        self.device = str(device)
        self.is_cuda = self.device.startswith("cuda")
        self.peak_bytes: Optional[int] = None
        self._profiler = None
        self._base = 0

    def __enter__(self) -> "PeakMemoryTracker":
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            with _native_stderr_silenced():
                self._profiler.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        with _native_stderr_silenced():
            self._profiler.__exit__(*exc_info)
        if exc_info[0] is None:
            self.peak_bytes = _cpu_peak_from_profile(self._profiler)


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null while kineto starts or stops: it writes ``USDT: ...
    profiler_start/stop`` lines there from C++, past Python's ``sys.stderr``."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak_from_profile(prof) -> int:
    """Peak of the running sum of the profiler's CPU ``[memory]`` events (bytes; frees < 0)."""
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        raise RuntimeError(
            "torch.profiler returned no events; CPU memory tracking needs a "
            "PyTorch built with kineto"
        )
    deltas = sorted(
        (event_start_ns(event), event.nbytes())
        for event in results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure_peak_memory(step: Callable[[], Any], device: str = "cpu") -> int:
    """Bytes: peak of live tensors allocated while ``step()`` runs (its result is freed)."""
    with PeakMemoryTracker(device) as tracker:
        step()
    return tracker.peak_bytes


@dataclass
class TimingCase:
    """One thing to time: ``step()`` runs one iteration (the caller sets no_grad etc. inside);
    ``time_and_measure`` also fills ``peak_bytes`` unless ``measure_memory`` is False."""

    name: str
    step: Callable[[], Any]
    times: List[float] = field(default_factory=list)
    error: Optional[BaseException] = None
    measure_memory: bool = True
    peak_bytes: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def latency_stats(times: Sequence[float]) -> Dict[str, float]:
    """Median, mean, min and max of ``times`` (seconds) in milliseconds."""
    ms = [t * 1e3 for t in times]
    return dict(median=statistics.median(ms), mean=statistics.fmean(ms), min=min(ms), max=max(ms))


def time_interleaved(
    cases: Sequence[TimingCase],
    repeat: int,
    warmup: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> None:
    """Fill ``case.times`` (seconds per step) for every case, round-robin.

    ``warmup`` untimed rounds, then ``repeat`` timed rounds; in round ``r`` the cases run in the
    order rotated by ``r``. A case that raises keeps the exception in ``case.error`` and is
    dropped from later rounds; the others go on.
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1 and warmup >= 0, got {repeat} and {warmup}")
    with Progress(len(cases) * (warmup + repeat), enabled=progress) as bar:
        for round_index in range(warmup + repeat):
            shift = round_index % max(len(cases), 1)
            for case in list(cases[shift:]) + list(cases[:shift]):
                if case.ok:
                    try:
                        synchronize(device)
                        start = time.perf_counter()
                        case.step()
                        synchronize(device)
                        elapsed = time.perf_counter() - start
                    except Exception as error:  # reported per case; the others are still measured
                        case.error = error
                    else:
                        if round_index >= warmup:
                            case.times.append(elapsed)
                bar.update()


def time_and_measure(
    cases: Sequence[TimingCase],
    repeat: int,
    warmup: int,
    device: str = "cpu",
    progress: bool = True,
    what: str = "case(s)",
) -> None:
    """``time_interleaved`` (announced on stderr with ``progress``), then the peak memory of one
    more step of every case that ran (``case.peak_bytes``; a failure goes to ``case.error``)."""
    if progress:
        rounds = f"{warmup} warm-up + {repeat} interleaved rounds"
        print(f"timing {len(cases)} {what}: {rounds}", file=sys.stderr)
    time_interleaved(cases, repeat, warmup, device, progress)
    for case in cases:
        if case.ok and case.measure_memory:
            try:
                case.peak_bytes = measure_peak_memory(case.step, device)
            except Exception as error:
                case.error = error


def format_error(error: BaseException) -> str:
    """``'TypeName: message'`` on one line, at most 300 characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 300 else text[:297] + "..."


REFERENCE_CONV_SHAPE = (64, 128)
REFERENCE_CONV_CHANNELS = (2048, 512)
REFERENCE_CONV = (
    f"3x3 conv {REFERENCE_CONV_CHANNELS[0]}->{REFERENCE_CONV_CHANNELS[1]} at "
    f"{REFERENCE_CONV_SHAPE[0]}x{REFERENCE_CONV_SHAPE[1]}, float32"
)


def reference_conv_case(device: str = "cpu") -> Tuple[TimingCase, float]:
    """This machine's float32 convolution rate as a timing case: the ANN head's largest layer,
    ``REFERENCE_CONV`` (batch 1). Returns the case (time it interleaved with what it is
    compared to) and its FLOPs (2 per multiply-add)."""
    (c_in, c_out), shape = REFERENCE_CONV_CHANNELS, REFERENCE_CONV_SHAPE
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False).to(device).eval()
    x = torch.randn(1, c_in, *shape, device=device)

    def step():
        with torch.no_grad():
            conv(x)

    flops = 2.0 * c_in * c_out * 9 * shape[0] * shape[1]
    return TimingCase("reference conv", step, measure_memory=False), flops
