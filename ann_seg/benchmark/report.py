"""Markdown tables, JSON files and the latency/memory plot of benchmark results."""

import math
import os
import os.path as osp
import platform
import sys
from typing import Any, Dict, List, Optional

import mmcv
import mmengine
import mmseg
import torch

from ann_seg.io import atomic_write_json, markdown_table, pyplot, save_figure

MEMORY_METHOD = {
    "cpu": "torch.profiler (profile_memory=True): peak of the running sum of CPU allocator "
    "events during one step, above the level at its start",
    "cuda": "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus "
    "memory_allocated at the start of the step",
}


def environment(device: str) -> Dict[str, Any]:
    """Versions, threads and device name, stored with every JSON result."""
    info = dict(
        torch=torch.__version__,
        mmcv=mmcv.__version__,
        mmengine=mmengine.__version__,
        mmseg=mmseg.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        cpu=_cpu_name(),
        cpu_count=os.cpu_count(),
        load_average=[round(x, 2) for x in os.getloadavg()],
        device=device,
        memory_method=MEMORY_METHOD["cuda" if device.startswith("cuda") else "cpu"],
        command=" ".join([osp.relpath(sys.argv[0])] + sys.argv[1:]) if sys.argv else "",
    )
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_json(path: str, payload: Dict[str, Any]) -> None:
    """Write ``payload`` (non-finite floats become ``null``)."""
    atomic_write_json(path, _finite(payload))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _num(value: Optional[float], fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def _sig(value: Optional[float]) -> str:
    """Three significant digits, no exponent below 1e6 (``1234``, ``12.3``, ``0.0123``)."""
    if value is None:
        return "–"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:#.3g}".rstrip(".")


def config_table(rows: List[Dict[str, Any]]) -> str:
    """Markdown table of ``benchmark_configs`` rows (errors as rows of their own)."""
    header = ["config", "input", "latency ms (median)", "min–max", "img/s", "peak MiB"]
    header += ["params M", "GMAC", "× latency", "× memory"]
    body = []
    for row in rows:
        shape = "x".join(map(str, row["shape"])) if row.get("shape") else "–"
        if row["status"] != "ok":
            error = f"**error ({row['stage']})**: " + row["error"].replace("|", "\\|")
            body.append([row["name"], shape, error] + [""] * 7)
            continue
        lat = row["latency_ms"]
        figures = [f"{lat['median']:.1f}", f"{lat['min']:.1f}–{lat['max']:.1f}"]
        for key in ("throughput_img_s", "peak_memory_mib", "params_m", "flops_g"):
            figures.append(_sig(row.get(key)))
        for key in ("latency_ratio", "memory_ratio"):
            figures.append(_num(row.get(key), "{:.2f}"))
        body.append([row["name"], shape, *figures])
    return markdown_table(header, body)


def settings_line(settings, meta: Dict[str, Any]) -> str:
    """One line describing a config benchmark run."""
    return (
        f"part={settings.part}, mode={settings.mode}, device={settings.device}, "
        f"batch={settings.batch_size}, "
        f"repeat={settings.repeat} (interleaved), warmup={settings.warmup}; "
        f"torch {meta['torch']}, {meta['threads']} thread(s), {meta['cpu']}, load "
        f"{meta['load_average'][0]:.1f}. "
        "× = ratio to the first config at the same input; GMAC = 10^9 multiply-adds per "
        "image, forward."
    )


def plot_latency_memory(rows: List[Dict[str, Any]], path: str, title: str = "") -> None:
    """Two panels, median latency and peak memory against input pixels, a line per config."""
    plt = pyplot()

    series: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok":
            series.setdefault(row["name"], []).append(row)
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
    ticks = {}
    for name, points in series.items():
        points.sort(key=lambda r: r["shape"][0] * r["shape"][1])
        xs = [r["shape"][0] * r["shape"][1] / 1e6 for r in points]
        for x, r in zip(xs, points):
            ticks[x] = "x".join(map(str, r["shape"]))
        median = [r["latency_ms"]["median"] for r in points]
        low = [m - r["latency_ms"]["min"] for m, r in zip(median, points)]
        high = [r["latency_ms"]["max"] - m for m, r in zip(median, points)]
        ax_time.errorbar(xs, median, yerr=[low, high], marker="o", capsize=3, label=name)
        ax_mem.plot(xs, [r["peak_memory_mib"] for r in points], marker="o", label=name)
    for ax, label in (
        (ax_time, "latency, ms (median; bars: min–max)"),
        (ax_mem, "peak memory, MiB"),
    ):
        ax.set_xlabel("input (H x W)")
        ax.set_ylabel(label)
        ax.set_xticks(list(ticks), list(ticks.values()), fontsize=8)
        ax.grid(alpha=0.3)
    ax_time.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
