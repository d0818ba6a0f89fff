"""The context-head study: our heads and mmseg's own context heads trained under one recipe on
the built-in long-range set, several seeds each, through mmengine's Runner; accuracy with
confidence intervals, cost from the benchmark, a Pareto plot, and a sweep over the distance
between the cue and the objects.

Every (distance, head, seed) run trains in its own spawned process (mmengine's registries and
visualizer are per process) and, when it finishes, writes ``runs/d<distance>/<head>_seed<seed>
.json`` atomically; a re-run with the same settings takes those files instead of training again,
so a killed study loses only the runs in flight. The training log of each run stays in its work
directory (``.../<head>_seed<seed>/train.log``); the console shows one line per finished run.
"""

import contextlib
import glob
import json
import math
import multiprocessing
import os
import os.path as osp
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from ann_seg.benchmark.models import BenchmarkSettings, benchmark_configs
from ann_seg.io import atomic_write_json, atomic_write_text, markdown_table, pyplot, save_figure
from ann_seg.mmseg.synthetic import MIN_CUE_DISTANCE_FRACTION, generate_long_range_dataset
from research.study_runs import (
    DATA_SIZE,
    HEADS,
    NUM_CLASSES,
    check_head,
    config_path,
    load_finished,
    run_in_child,
    run_spec,
)
from research.study_stats import pareto_front, t_interval

# A run "left the plateau" when its final mIoU beats that of predicting background everywhere
# (the "everything is background" plateau, background IoU / num_classes) by this margin.
PLATEAU_MARGIN = 5.0
BASELINE = "fcn"  # the local head the others are compared with, seed by seed
SWEEP_DISTANCES = (0.1, 0.2, 0.4, 0.6)
# tools/compare_heads.py --quick: a local baseline, a pooling head, a cascade and ANN
QUICK_PRESET = dict(
    heads=["fcn", "psp", "ocrnet", "ann"], seeds=[0, 1], sweep_distances=[0.1, 0.4, 0.6]
)


@dataclass
class StudySettings:
    """What ``tools/compare_heads.py`` trains and measures."""

    heads: Sequence[str] = tuple(HEADS)
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    max_iters: int = 800
    val_interval: int = 100
    num_train: int = 400
    num_val: int = 60
    distance: float = MIN_CUE_DISTANCE_FRACTION
    sweep_distances: Sequence[float] = SWEEP_DISTANCES
    sweep_heads: Optional[Sequence[str]] = None  # None: the study's heads
    sweep_seeds: Sequence[int] = (0,)
    data_root: str = "data/synthetic_long_range_64x128"
    work_dir: str = "work_dirs/compare_heads"
    jobs: int = 2
    threads_per_job: int = 1
    cost_shape: Tuple[int, int] = (512, 1024)
    cost_repeat: int = 5
    confidence: float = 0.95
    progress: bool = True
    extra: dict = field(default_factory=dict)  # free-form, stored with the results

    def __post_init__(self):
        for head in list(self.heads) + list(self.sweep_heads or []):
            check_head(head)
        if not self.heads or not self.seeds:
            raise ValueError("the study needs at least one head and one seed")
        if self.jobs < 1 or self.threads_per_job < 1:
            raise ValueError(
                f"jobs and threads_per_job must be >= 1, got {self.jobs}, {self.threads_per_job}"
            )
        if self.max_iters < 1 or self.val_interval < 1 or self.val_interval > self.max_iters:
            raise ValueError(
                f"need 1 <= val_interval <= max_iters, got {self.val_interval}, {self.max_iters}"
            )


def data_root_for(settings: StudySettings, distance: float) -> str:
    """The study's data root at its own distance, a sibling ``<root>_d0.10`` at the others."""
    if distance == settings.distance:
        return settings.data_root
    return f"{settings.data_root.rstrip('/')}_d{distance:.2f}"


# --------------------------------------------------------------------------- one run


def run_paths(settings: StudySettings, head: str, seed: int, distance: float) -> Tuple[str, str]:
    """``(result json, mmengine work dir)`` of a run."""
    base = osp.join(settings.work_dir, "runs", f"d{distance:.2f}", f"{head}_seed{seed}")
    return base + ".json", base


def _run_all(settings: StudySettings, planned: List[Tuple[dict, str, str, str]]) -> List[str]:
    """Train the planned runs ``jobs`` at a time; one line per finished run. Returns errors."""
    errors: List[str] = []
    if not planned:
        return errors
    context = multiprocessing.get_context("spawn")
    start, done = time.perf_counter(), 0
    with ProcessPoolExecutor(settings.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        pending: Dict[Future, dict] = {}
        queue = list(planned)
        while queue or pending:
            while queue and len(pending) < settings.jobs:
                spec, data_root, work_dir, path = queue.pop(0)
                future = pool.submit(
                    run_in_child, spec, data_root, work_dir, path, settings.threads_per_job
                )
                pending[future] = dict(spec=spec, work_dir=work_dir)
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                info = pending.pop(future)
                spec, done = info["spec"], done + 1
                name = f"{spec['head']} seed {spec['seed']} at distance {spec['distance']:.2f}"
                elapsed = time.perf_counter() - start
                eta = elapsed / done * (len(planned) - done)
                try:
                    result = future.result()
                    line = (
                        f"mIoU {result['mIoU']:.1f}, mAcc {result['mAcc']:.1f}, "
                        f"{result['train_s']:.0f} s"
                    )
                except Exception as error:  # one run's failure must not stop the others
                    log = osp.join(info["work_dir"], "train.log")
                    errors.append(f"{name}: {type(error).__name__}: {error} (log: {log})")
                    line = f"FAILED ({type(error).__name__}: {error}; log: {log})"
                if settings.progress:
                    print(
                        f"[{done}/{len(planned)}] {name}: {line}; elapsed {elapsed / 60:.1f} "
                        f"min, eta {eta / 60:.1f} min",
                        file=sys.stderr,
                        flush=True,
                    )
    return errors


# --------------------------------------------------------------------------- summaries


def trivial_miou(data_root: str) -> float:
    """mIoU of predicting background everywhere on the val split: the background IoU (its
    pixel fraction) over the classes, every other IoU 0."""
    paths = glob.glob(osp.join(data_root, "gtFine", "val", "*", "*_labelTrainIds.png"))
    if not paths:
        raise FileNotFoundError(f"no val label maps under {data_root}/gtFine/val")
    background = total = 0
    for path in paths:
        label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        background += int((label == 0).sum())
        total += label.size
    return 100.0 * background / total / NUM_CLASSES


def summarise(
    runs: Sequence[dict], confidence: float = 0.95, plateau_miou: float = 0.0
) -> List[dict]:
    """One row per head (in ``HEADS`` order): mIoU mean, t-interval, median (robust to the one
    seed of five that stalls), per seed, plateau fraction, train time and train-step peak."""
    rows = []
    for head in [h for h in HEADS if any(r["spec"]["head"] == h for r in runs)]:
        mine = sorted(
            (r for r in runs if r["spec"]["head"] == head), key=lambda r: r["spec"]["seed"]
        )
        values = [r["mIoU"] for r in mine]
        mean, low, high = t_interval(values, confidence)
        rows.append(
            dict(
                head=head,
                label=HEADS[head].label,
                source=HEADS[head].source,
                config=HEADS[head].config,
                seeds=[r["spec"]["seed"] for r in mine],
                mIoU=values,
                mean=mean,
                median=float(np.median(values)),
                ci_low=low,
                ci_high=high,
                std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                left_plateau=sum(r["mIoU"] > plateau_miou + PLATEAU_MARGIN for r in mine),
                train_s=float(np.median([r["train_s"] for r in mine])),
                train_peak_mib=max(r["train_peak_mib"] for r in mine),
            )
        )
    add_paired_differences(rows, BASELINE, confidence)
    return rows


def add_paired_differences(rows: List[dict], baseline: str, confidence: float = 0.95) -> None:
    """``delta``/``delta_low``/``delta_high``: each head's mIoU minus the baseline's, seed by seed
    (same seed: same initial backbone draw and data order), as a t-interval over the seeds both
    have. Pairing removes the seed-to-seed variation the two share."""
    base = next((r for r in rows if r["head"] == baseline), None)
    for row in rows:
        row["delta"] = row["delta_low"] = row["delta_high"] = math.nan
        if base is None or row is base:
            continue
        base_by_seed = dict(zip(base["seeds"], base["mIoU"]))
        diffs = [
            v - base_by_seed[s] for s, v in zip(row["seeds"], row["mIoU"]) if s in base_by_seed
        ]
        if diffs:
            row["delta"], row["delta_low"], row["delta_high"] = t_interval(diffs, confidence)


def measure_costs(settings: StudySettings, heads: Sequence[str]) -> Dict[str, dict]:
    """Inference latency, peak memory, parameters and FLOPs of every head's whole model at
    ``cost_shape`` (``ann_seg.benchmark``, the heads timed interleaved in one run); stored in
    ``cost.json`` and reused while the heads, shape and repeat count are the same."""
    path = osp.join(settings.work_dir, "cost.json")
    key = dict(shape=list(settings.cost_shape), repeat=settings.cost_repeat)
    stored = {}
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("key") == key:
            stored = saved["heads"]
    missing = [h for h in heads if h not in stored]
    if missing:
        bench = BenchmarkSettings(part="model", mode="infer", repeat=settings.cost_repeat)
        rows = benchmark_configs(
            [config_path(h) for h in missing],
            bench,
            [tuple(settings.cost_shape)],
            progress=settings.progress,
        )
        for head, row in zip(missing, rows):
            if row["status"] != "ok":
                raise RuntimeError(f"cost of {head} at {settings.cost_shape}: {row['error']}")
            stored[head] = dict(
                latency_ms=row["latency_ms"]["median"],
                peak_memory_mib=row["peak_memory_mib"],
                params_m=row["params_m"],
                flops_g=row["flops_g"],
                threads=torch.get_num_threads(),
            )
        atomic_write_json(path, dict(key=key, heads=stored))
    return {h: stored[h] for h in heads}


def _fmt(value: Optional[float], fmt: str = "{:.1f}") -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else fmt.format(value)
    )


def results_table(
    rows: Sequence[dict],
    costs: Optional[Dict[str, dict]] = None,
    cost_shape: Optional[Sequence[int]] = None,
) -> str:
    """Markdown table of ``summarise``'s rows, with the cost columns when ``costs`` is given."""
    shape = f" @{cost_shape[0]}x{cost_shape[1]}" if cost_shape else ""
    header = [
        "head",
        "from",
        "mIoU mean [95% CI]",
        "median",
        f"Δ vs {HEADS[BASELINE].name} (paired) [95% CI]",
        "per seed",
        "left plateau",
        "train s/run (median)",
        "train-step peak (MiB)",
    ]
    if costs:
        header += [f"latency (ms){shape}", f"peak (MiB){shape}", "params (M)", f"GMAC{shape}"]
    body = []
    for row in rows:
        line = [
            row["label"],
            row["source"],
            f"{row['mean']:.1f} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]",
            f"{row['median']:.1f}",
            ""
            if math.isnan(row.get("delta", math.nan))
            else (
                f"{row['delta']:+.1f} [{_fmt(row['delta_low'], '{:+.1f}')}, "
                f"{_fmt(row['delta_high'], '{:+.1f}')}]"
            ),
            ", ".join(f"{v:.1f}" for v in row["mIoU"]),
            f"{row['left_plateau']}/{len(row['mIoU'])}",
            f"{row['train_s']:.0f}",
            f"{row['train_peak_mib']:.0f}",
        ]
        if costs:
            cost = costs[row["head"]]
            line += [
                f"{cost['latency_ms']:.0f}",
                f"{cost['peak_memory_mib']:.0f}",
                f"{cost['params_m']:.2f}",
                _fmt(cost["flops_g"], "{:.2f}"),
            ]
        body.append(line)
    return markdown_table(header, body, align="llrllllrr" + ("rrrr" if costs else ""))


def sweep_table(sweep: Dict[str, Dict[float, List[float]]]) -> str:
    """Markdown table: one row per head, mean mIoU per distance over its seeds (their number
    in brackets where it is not 1; n/a: no finished run)."""
    distances = sorted({d for per_head in sweep.values() for d in per_head})
    header = ["head"] + [f"d = {d:.1f}·H" for d in distances]

    def cell(values: Optional[List[float]]) -> str:
        if not values:
            return _fmt(None)
        mean = _fmt(float(np.mean(values)))
        return mean if len(values) == 1 else f"{mean} ({len(values)})"

    body = [[HEADS[h].label] + [cell(per.get(d)) for d in distances] for h, per in sweep.items()]
    return markdown_table(header, body, align="l" + "r" * len(distances))


# --------------------------------------------------------------------------- figures


def _colours(heads: Sequence[str]) -> Dict[str, tuple]:
    plt = pyplot()
    cmap = plt.get_cmap("tab20")
    return {h: cmap(i % 20) for i, h in enumerate(HEADS) if h in heads}


def plot_pareto(rows: Sequence[dict], costs: Dict[str, dict], path: str, title: str) -> None:
    """mIoU (mean, 95 % CI bars) against inference latency and against peak memory; the Pareto
    front (no head both cheaper and better) drawn through."""
    plt = pyplot()
    colours = _colours([r["head"] for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), dpi=100, sharey=True)
    for ax, key, xlabel in (
        (axes[0], "latency_ms", "inference latency (ms, median)"),
        (axes[1], "peak_memory_mib", "inference peak memory (MiB)"),
    ):
        points = [(costs[r["head"]][key], r["mean"]) for r in rows]
        for row, (x, y) in zip(rows, points):
            low, high = row["ci_low"], row["ci_high"]
            yerr = None if math.isnan(low) else [[y - low], [high - y]]
            marker = "o" if row["source"] == "ann_seg" else "s"
            ax.errorbar(
                x,
                y,
                yerr=yerr,
                fmt=marker,
                color=colours[row["head"]],
                capsize=3,
                markersize=7,
                label=row["label"],
            )
            ax.annotate(row["head"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        front = pareto_front(points)
        ax.step(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            where="post",
            color="0.4",
            linestyle="--",
            linewidth=1,
            label="Pareto front",
        )
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    low, high = axes[0].get_ylim()  # an interval from 2 seeds can reach past 0-100 %
    axes[0].set_ylim(max(low, 0.0), min(high, 100.0))
    axes[0].set_ylabel("val mIoU (%), mean and 95 % CI over seeds")
    axes[1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_sweep(sweep: Dict[str, Dict[float, List[float]]], path: str, title: str) -> None:
    """mIoU of each head against the cue distance (mean over the sweep seeds; bars: min-max)."""
    plt = pyplot()
    colours = _colours(list(sweep))
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=100)
    for head, per in sweep.items():
        distances = sorted(d for d in per if per[d])
        means = [float(np.mean(per[d])) for d in distances]
        spread = [
            [m - min(per[d]) for m, d in zip(means, distances)],
            [max(per[d]) - m for m, d in zip(means, distances)],
        ]
        style = "-" if HEADS[head].source == "ann_seg" else "--"
        ax.errorbar(
            distances,
            means,
            yerr=spread,
            linestyle=style,
            marker="o",
            capsize=2,
            color=colours[head],
            label=HEADS[head].label,
        )
    ax.set_xlabel("distance from the cue band to the nearest object (fraction of the height)")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_curves(runs: Sequence[dict], path: str) -> None:
    """Validation mIoU against iterations: mean over seeds per head, band min-max."""
    plt = pyplot()
    heads = [h for h in HEADS if any(r["spec"]["head"] == h for r in runs)]
    colours = _colours(heads)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for head in heads:
        curves = [r["curve"] for r in runs if r["spec"]["head"] == head]
        iters = [p["iter"] for p in curves[0]]
        values = np.array([[p["mIoU"] for p in c][: len(iters)] for c in curves])
        ax.plot(
            iters,
            values.mean(0),
            marker="o",
            markersize=3,
            color=colours[head],
            label=HEADS[head].label,
        )
        if len(values) > 1:
            ax.fill_between(iters, values.min(0), values.max(0), alpha=0.12, color=colours[head])
    ax.set_xlabel("training iteration")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title("mean over seeds (band: min-max)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------- the study


def plan_runs(settings: StudySettings) -> List[Tuple[dict, str, str, str]]:
    """Every run as ``(spec, data_root, work_dir, json)``, seed-major: for each seed the study's
    heads, then (for a sweep seed) the sweep's distances, so that a partial study holds whole
    seeds of both; duplicates (the sweep at the study's distance) once."""
    sweep_heads = settings.sweep_heads or settings.heads
    seeds = list(dict.fromkeys(list(settings.seeds) + list(settings.sweep_seeds)))
    keys = []
    for seed in seeds:
        if seed in settings.seeds:
            keys += [(settings.distance, h, seed) for h in settings.heads]
        if seed in settings.sweep_seeds:
            keys += [(d, h, seed) for d in settings.sweep_distances for h in sweep_heads]
    planned = []
    for distance, head, seed in dict.fromkeys(keys):
        spec = run_spec(settings, head, seed, distance)
        path, work_dir = run_paths(settings, head, seed, distance)
        planned.append((spec, data_root_for(settings, distance), work_dir, path))
    return planned


def sweep_results(
    settings: StudySettings, results: Dict[Tuple[float, str, int], Optional[dict]]
) -> Dict[str, Dict[float, List[float]]]:
    """mIoU per sweep head and distance over every finished run of the study's seeds: the
    planned ones in ``results``, and those of seeds beyond ``sweep_seeds`` stored in the work
    dir by an earlier invocation (``--sweep-distances 0.6 --sweep-seeds 1 2`` adds seeds to one
    point); at the study's own distance, its ``seeds``."""
    seeds = list(dict.fromkeys(list(settings.sweep_seeds) + list(settings.seeds)))
    sweep: Dict[str, Dict[float, List[float]]] = {}
    for head in [h for h in HEADS if h in (settings.sweep_heads or settings.heads)]:
        for distance in sorted(set(settings.sweep_distances)):
            for seed in seeds:
                if distance == settings.distance and seed not in settings.seeds:
                    continue
                key = (distance, head, seed)
                if key in results:
                    result = results[key]
                else:
                    path = run_paths(settings, head, seed, distance)[0]
                    result = load_finished(path, run_spec(settings, head, seed, distance))
                if result is not None:
                    sweep.setdefault(head, {}).setdefault(distance, []).append(result["mIoU"])
    return sweep


def _seed_counts(sweep: Dict[str, Dict[float, List[float]]]) -> str:
    counts = sorted({len(v) for per in sweep.values() for v in per.values()})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def compare_heads(settings: StudySettings, train: bool = True) -> dict:
    """Train what is not finished (``train=False``: nothing, a report of what is), then write
    ``results.json``, ``results.md``, ``pareto.png``, ``sweep.png`` and ``miou_curves.png``
    under the work dir."""
    planned = plan_runs(settings)
    for distance in dict.fromkeys(spec["distance"] for spec, *_ in planned):
        generate_long_range_dataset(
            data_root_for(settings, distance),
            num_train=settings.num_train,
            num_val=settings.num_val,
            size=DATA_SIZE,
            seed=0,
            progress=False,
            cue_distance=distance,
        )
    todo = [p for p in planned if load_finished(p[3], p[0]) is None]
    if settings.progress:
        finished = len(planned) - len(todo)
        plan = (
            f"{finished} finished earlier, {len(todo)} to train ({settings.jobs} at a time, "
            f"{settings.threads_per_job} thread(s) each)"
            if train
            else f"{finished} finished; reporting those, training none"
        )
        print(f"{len(planned)} runs planned, {plan}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    errors = _run_all(settings, todo if train else [])
    train_wall_s = time.perf_counter() - start
    results = {
        (p[0]["distance"], p[0]["head"], p[0]["seed"]): load_finished(p[3], p[0]) for p in planned
    }
    runs = [r for (d, _, _), r in results.items() if r is not None and d == settings.distance]
    plateau = trivial_miou(settings.data_root)
    rows = summarise(runs, settings.confidence, plateau)
    costs = measure_costs(settings, [r["head"] for r in rows]) if rows else {}
    sweep = sweep_results(settings, results) if settings.sweep_distances else {}
    summary = dict(
        settings={k: v for k, v in asdict(settings).items() if k != "progress"},
        finished=sum(r is not None for r in results.values()),
        planned=len(planned),
        train_wall_s=round(train_wall_s, 1),
        plateau_miou=plateau,
        plateau_margin=PLATEAU_MARGIN,
        errors=errors,
        rows=rows,
        costs=costs,
        sweep={h: {f"{d:.2f}": v for d, v in per.items()} for h, per in sweep.items()},
        runs=[r for r in results.values() if r is not None],
    )
    os.makedirs(settings.work_dir, exist_ok=True)
    atomic_write_json(osp.join(settings.work_dir, "results.json"), summary)
    text = results_table(rows, costs, settings.cost_shape)
    if sweep:
        text += "\n\n" + sweep_table(sweep)
    atomic_write_text(osp.join(settings.work_dir, "results.md"), text + "\n")
    counts = sorted({len(row["mIoU"]) for row in rows})
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}" if counts else "0"
    if rows:
        plot_pareto(
            rows,
            costs,
            osp.join(settings.work_dir, "pareto.png"),
            f"Long-range set, distance {settings.distance:.1f}·H, {seeds} seed(s) per head, "
            f"{settings.max_iters} iterations; cost of the whole model at "
            f"{settings.cost_shape[0]}x{settings.cost_shape[1]}",
        )
        plot_curves(runs, osp.join(settings.work_dir, "miou_curves.png"))
    if sweep:
        plot_sweep(
            sweep,
            osp.join(settings.work_dir, "sweep.png"),
            f"Cue-object distance sweep: {_seed_counts(sweep)} seed(s) per point, "
            f"{settings.max_iters} iterations",
        )
    return summary
