"""Folder-inference throughput side by side (``tools/benchmark_inference.py --throughput``).

One run segments the same generated folder (``count`` synthetic 64x128 PNGs) with the same
seeded random weights (saved as a checkpoint) in each mode:

* ``MMSegInferencer``: mmseg's own inferencer with ``out_dir`` (it writes ``pred/`` label
  PNGs named by a counter in input order, and ``vis/`` colour renderings), in this process;
* ``sequential``: ``tools/infer.py`` as it is (the sequential loop, batch 1);
* ``pipelined``: ``tools/infer.py --workers 2 --batch-size 4``;
* ``2 ranks x 1 thread`` and ``1 rank x 2 threads``: ``tools/dist_infer.sh`` (torchrun).

Or (``loader_grid_modes``) ``tools/infer.py`` over a grid of ``--workers`` x ``--batch-size``,
workers 0 and batch 1 being the sequential loop, to measure what each knob does.

Ours run as subprocesses (their own interpreter and thread settings). Per mode: images/s
over the steady part (from the moment the model was loaded, on the first rank ready, to
the last image written, from the journals' timestamps), the wall time including the start,
and the cost per image over the first and the last 10 % of the folder (journal timestamps;
for ``MMSegInferencer`` the folder is fed in ten chunks, timed), to show it stays flat. Label
maps are compared with ``sequential``'s, image by image (``MMSegInferencer``'s ``pred/``
files by their position in the input order).
"""

import argparse
import os
import os.path as osp
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from mmengine.config import DictAction
from mmseg.apis import MMSegInferencer
from PIL import Image

from ann_seg.benchmark.inference_modes import load_model
from ann_seg.benchmark.measure import format_error
from ann_seg.benchmark.report import environment
from ann_seg.inference.journal import read_journals
from ann_seg.io import Progress, markdown_table, pyplot, read_label_png, save_figure
from ann_seg.mmseg import load_config
from ann_seg.mmseg.synthetic import render_long_range_sample

DEFAULT_IMAGES = 1000
IMAGE_SIZE = (64, 128)
REFERENCE = "sequential"
MMSEG = "MMSegInferencer"
CHUNKS = 10


@dataclass
class Mode:
    """One way to segment the folder: ``args`` for ``tools/infer.py``, or ``ranks`` for
    ``tools/dist_infer.sh``; ``None`` both: ``MMSegInferencer``."""

    name: str
    threads: int
    args: Sequence[str] = ()
    ranks: Optional[int] = None
    command: List[str] = field(default_factory=list)


def default_modes(threads: int) -> List[Mode]:
    """The five modes of the module docstring; ``threads``: the single-process modes'."""
    half = max(1, threads // 2)
    return [
        Mode(MMSEG, threads),
        Mode(REFERENCE, threads, args=()),
        Mode(
            "pipelined (workers 2, batch 4)", threads, args=("--workers", "2", "--batch-size", "4")
        ),
        Mode(f"2 ranks x {half} thread(s)", half, ranks=2),
        Mode(f"1 rank x {threads} thread(s)", threads, ranks=1),
    ]


def speed_modes(threads: int) -> List[Mode]:
    """mmseg's inferencer against ``ann-seg infer`` in float32 and with ``--fast``, batch 1
    and 4: what the speed policy gives a folder."""
    return [
        Mode(MMSEG, threads),
        Mode(REFERENCE, threads, args=()),
        Mode("--fast", threads, args=("--fast",)),
        Mode("--fast, batch 4", threads, args=("--fast", "--batch-size", "4")),
    ]


GRID_WORKERS = (0, 1, 2)
GRID_BATCH_SIZES = (1, 4, 8)


def loader_grid_modes(
    threads: int,
    workers: Sequence[int] = GRID_WORKERS,
    batch_sizes: Sequence[int] = GRID_BATCH_SIZES,
) -> List[Mode]:
    """``tools/infer.py`` with every ``--workers`` x ``--batch-size`` pair, each once; ``(0, 1)``
    (always included, first) is the sequential loop, the reference of the label comparison."""
    if any(w < 0 for w in workers) or any(b < 1 for b in batch_sizes):
        raise ValueError(f"need workers >= 0 and batch sizes >= 1, got {workers} and {batch_sizes}")
    others = dict.fromkeys((w, b) for w in workers for b in batch_sizes if (w, b) != (0, 1))
    return [Mode(REFERENCE, threads)] + [
        Mode(f"workers {w}, batch {b}", threads, args=("--workers", str(w), "--batch-size", str(b)))
        for w, b in others
    ]


def make_images(folder: str, count: int, size=IMAGE_SIZE, seed: int = 0) -> List[str]:
    """``count`` synthetic PNGs ``img00000.png`` ... in ``folder`` (kept when already there);
    their paths, sorted."""
    if count < CHUNKS:
        raise ValueError(f"need at least {CHUNKS} images, got {count}")
    os.makedirs(folder, exist_ok=True)
    paths = [osp.join(folder, f"img{i:05d}.png") for i in range(count)]
    for index, path in enumerate(paths):
        if not osp.isfile(path):
            image = render_long_range_sample(seed, "val", index, size=size).image
            if not cv2.imwrite(path, np.ascontiguousarray(image[..., ::-1])):
                raise OSError(f"cannot write {path}")
    return paths


def save_random_checkpoint(config, path: str, seed: int = 0) -> str:
    """The config's model with seeded random weights (``load_model(config, 'random')``) as a
    checkpoint with its classes and palette, so that every mode loads the same weights."""
    model = load_model(config, "random", seed=seed)
    meta = {k: model.dataset_meta[k] for k in ("classes", "palette")}
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": meta}}, path)
    return path


def decile_costs(ready: float, times: Sequence[float]) -> Dict[str, float]:
    """Milliseconds per image over the first and the last tenth of ``times`` (when each image
    was finished, any order), the first counted from ``ready``."""
    times = sorted(times)
    k = max(1, len(times) // 10)
    first = (times[k - 1] - ready) / k
    last = (times[-1] - times[-1 - k]) / k if len(times) > k else first
    return {"first_ms": first * 1e3, "last_ms": last * 1e3}


def _journal_timing(out_dir: str, count: int) -> Dict[str, Any]:
    state = read_journals(out_dir)
    done = [e for e in state.current.values() if e["status"] == "done"]
    if len(done) != count:
        raise RuntimeError(f"{out_dir}: {len(done)} of {count} images done")
    ready = min(r["started"] + r["load_model_s"] for r in state.ranks.values())
    times = [e["time"] for e in done]
    span = max(times) - ready
    return dict(img_s=count / span, steady_s=span, **decile_costs(ready, times))


def _label_paths_ours(out_dir: str, paths: Sequence[str]) -> List[str]:
    return [osp.join(out_dir, "labels", osp.basename(p) + ".png") for p in paths]


def _label_paths_mmseg(out_dir: str, paths: Sequence[str]) -> List[str]:
    return [osp.join(out_dir, "pred", f"{i:08d}_pred.png") for i in range(len(paths))]


def _read_labels(paths: Sequence[str], mmseg: bool) -> List[np.ndarray]:
    if not mmseg:
        return [read_label_png(p) for p in paths]
    labels = []
    for path in paths:
        with Image.open(path) as image:
            labels.append(np.array(image))
    return labels


def parse_cfg_options(pairs: Sequence[str]) -> dict:
    """``['a.b=1', ...]`` as mmengine's ``DictAction`` parses them."""
    namespace = argparse.Namespace(options={})
    if pairs:
        DictAction(option_strings=[], dest="options")(None, namespace, list(pairs))
    return namespace.options


def _run_mmseg(
    config, checkpoint: str, paths: Sequence[str], out_dir: str, mode: Mode, cfg_options=()
):
    previous = torch.get_num_threads()
    torch.set_num_threads(mode.threads)
    try:
        start = time.perf_counter()
        cfg = load_config(config, parse_cfg_options(cfg_options), work_dir="")
        inferencer = MMSegInferencer(cfg, checkpoint, device="cpu")
        inferencer.show_progress = False  # mmengine's bar, once per chunk
        ready = time.perf_counter()
        chunk = -(-len(paths) // CHUNKS)
        costs = []
        for first in range(0, len(paths), chunk):
            part = list(paths[first : first + chunk])
            begin = time.perf_counter()
            inferencer(part, out_dir=out_dir, batch_size=1)
            costs.append((time.perf_counter() - begin) / len(part))
        end = time.perf_counter()
    finally:
        torch.set_num_threads(previous)
    return dict(
        img_s=len(paths) / (end - ready),
        steady_s=end - ready,
        wall_s=end - start,
        first_ms=costs[0] * 1e3,
        last_ms=costs[-1] * 1e3,
    )


def _command(mode: Mode, tools_dir: str, config, checkpoint, folder, out_dir) -> List[str]:
    common = ["--out-dir", out_dir, "--no-progress", "--threads", str(mode.threads)]
    if mode.ranks is None:
        tool = [sys.executable, osp.join(tools_dir, "infer.py"), config, checkpoint, folder]
        return tool + list(mode.args) + common
    tool = [osp.join(tools_dir, "dist_infer.sh"), config, checkpoint, folder, str(mode.ranks)]
    return tool + list(mode.args) + common


def _tool_env(tools_dir: str, port: int) -> Dict[str, str]:
    """The environment of the tools: torchrun's master port (``dist_infer.sh``'s ``PORT``);
    the ``ann_seg`` next to ``tools_dir`` first on the path (that checkout is measured)."""
    env = dict(os.environ, PORT=str(port))
    root = osp.dirname(osp.abspath(tools_dir))
    if osp.isdir(osp.join(root, "ann_seg")):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _run_tool(command: List[str], out_dir: str, count: int, env: Dict[str, str]) -> Dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return dict(_journal_timing(out_dir, count), wall_s=wall)


def _short(path: str) -> str:
    """``path`` relative to the working folder when inside it."""
    if osp.isabs(path) and not osp.relpath(path).startswith(os.pardir):
        return osp.relpath(path)
    return path


def _agreement(labels: List[np.ndarray], reference: List[np.ndarray]) -> Dict[str, Any]:
    differ = sum(not np.array_equal(a, b) for a, b in zip(labels, reference))
    equal = sum(int((a == b).sum()) for a, b in zip(labels, reference))
    pixels = sum(b.size for b in reference)
    return {"images_differing": differ, "pixel_agreement": equal / pixels}


def run_throughput(
    config: str,
    tools_dir: str,
    work_dir: str,
    count: int = DEFAULT_IMAGES,
    threads: int = 2,
    rounds: int = 1,
    checkpoint: str = "random",
    progress: bool = True,
    port: int = 29530,
    modes: Optional[List[Mode]] = None,
    size: Tuple[int, int] = IMAGE_SIZE,
    cfg_options: Sequence[str] = (),
) -> Dict[str, Any]:
    """Segment ``count`` generated images in every mode (default ``default_modes(threads)``),
    ``rounds`` times (the order rotated per round; figures: the median over rounds); outputs
    under ``work_dir``. Returns ``rows`` (one per mode) and ``meta``. A mode that fails keeps
    its error in its row."""
    if rounds < 1 or threads < 1:
        raise ValueError(f"need rounds >= 1 and threads >= 1, got {rounds} and {threads}")
    for tool in ("infer.py", "dist_infer.sh"):
        if not osp.isfile(osp.join(tools_dir, tool)):
            raise FileNotFoundError(f"{tool} not found in {tools_dir} (needs a source checkout)")
    start_env = environment("cpu")  # load average before the run
    folder = osp.join(work_dir, f"images_{count}_{size[0]}x{size[1]}")
    paths = make_images(folder, count, size)
    if checkpoint == "random":
        checkpoint = save_random_checkpoint(config, osp.join(work_dir, "random.pth"))
    modes = default_modes(threads) if modes is None else modes
    figures: Dict[str, List[Dict[str, Any]]] = {m.name: [] for m in modes}
    errors: Dict[str, str] = {}
    labels: Dict[str, List[np.ndarray]] = {}
    bar = Progress(len(modes) * rounds, enabled=progress)
    for round_index in range(rounds):
        shift = round_index % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            if mode.name in errors:
                continue
            out_dir = osp.join(work_dir, "out", f"{modes.index(mode)}_round{round_index}")
            shutil.rmtree(out_dir, ignore_errors=True)
            try:
                if mode.name == MMSEG:
                    mode.command = ["MMSegInferencer(config, checkpoint)(chunk, out_dir=...)"]
                    result = _run_mmseg(config, checkpoint, paths, out_dir, mode, cfg_options)
                    found = _label_paths_mmseg(out_dir, paths)
                else:
                    mode.command = _command(mode, tools_dir, config, checkpoint, folder, out_dir)
                    if cfg_options:
                        mode.command += ["--cfg-options", *cfg_options]
                    mode_port = port + len(modes) * round_index + modes.index(mode)
                    env = _tool_env(tools_dir, mode_port)
                    result = _run_tool(mode.command, out_dir, count, env)
                    found = _label_paths_ours(out_dir, paths)
                if round_index == 0:
                    labels[mode.name] = _read_labels(found, mode.name == MMSEG)
                figures[mode.name].append(result)
            except Exception as error:  # reported in its row; the other modes go on
                errors[mode.name] = format_error(error)
            bar.update()
    bar.close()
    reference = labels.get(REFERENCE)
    rows = []
    for mode in modes:
        row: Dict[str, Any] = {"mode": mode.name, "threads": mode.threads, "ranks": mode.ranks}
        row["command"] = " ".join(_short(c) for c in mode.command)
        if mode.name in errors:
            row["error"] = errors[mode.name]
        if figures[mode.name]:
            for key in figures[mode.name][0]:
                row[key] = statistics.median(f[key] for f in figures[mode.name])
        if reference is not None and mode.name in labels:
            row.update(_agreement(labels[mode.name], reference))
        rows.append(row)
    meta = dict(
        start_env,
        load_average_end=environment("cpu")["load_average"],
        images=count,
        image_size=f"{size[0]}x{size[1]}",
        config=str(config),
        checkpoint="random (seeded, saved for every mode)",
        rounds=rounds,
        cfg_options=list(cfg_options),
        reference=REFERENCE,
        work_dir=work_dir,
    )
    return dict(meta=meta, rows=rows)


def throughput_table(result: Dict[str, Any]) -> str:
    """Markdown table of ``run_throughput``'s rows."""
    header = [
        "mode",
        "img/s",
        "wall s",
        "ms/img first 10 %",
        "ms/img last 10 %",
        "last / first",
        "labels vs sequential",
    ]
    body = []
    for row in result["rows"]:
        if "img_s" not in row:
            body.append([row["mode"], "-", "-", "-", "-", "-", row.get("error", "")])
            continue
        if "images_differing" not in row:
            agreement = "not compared"
        elif row["images_differing"] == 0:
            agreement = "identical"
        else:
            agreement = (
                f"{row['images_differing']} images differ "
                f"({100 * row['pixel_agreement']:.3f}% pixels agree)"
            )
        body.append(
            [
                row["mode"],
                f"{row['img_s']:.1f}",
                f"{row['wall_s']:.1f}",
                f"{row['first_ms']:.1f}",
                f"{row['last_ms']:.1f}",
                f"{row['last_ms'] / row['first_ms']:.2f}",
                agreement,
            ]
        )
    return markdown_table(header, body, align="lrrrrrl")


def describe_throughput(result: Dict[str, Any]) -> str:
    meta = result["meta"]
    return (
        f"{meta['images']} generated {meta['image_size']} PNGs, {meta['config']} with "
        f"{meta['checkpoint']} weights, CPU {meta['cpu']} ({meta['cpu_count']} cores, load "
        f"average {meta['load_average']} before, {meta['load_average_end']} after), "
        f"{meta['rounds']} round(s). img/s: from the model "
        "loaded to the last image written; wall: the whole command (MMSegInferencer: in this "
        "process, without an interpreter start; it also writes vis/ renderings)."
    )


SCALING_COUNTS = (1000, 5000, 20000)
SCALING_POINTS = 50  # cost-per-image points along each folder in the scaling plot


def cost_curve(ready: float, times: Sequence[float], points: int = SCALING_POINTS) -> List[List]:
    """``[[images_done, ms_per_image], ...]``: the cost per image over ``points`` consecutive
    equal slices of the folder (finish times in any order; the first slice counted from
    ``ready``)."""
    times = sorted(times)
    step = max(1, len(times) // points)
    curve, previous = [], ready
    for end in range(step, len(times) + 1, step):
        curve.append([end, (times[end - 1] - previous) / step * 1e3])
        previous = times[end - 1]
    return curve


def _finish_times(out_dir: str) -> Dict[str, Any]:
    state = read_journals(out_dir)
    ready = min(r["started"] + r["load_model_s"] for r in state.ranks.values())
    times = [e["time"] for e in state.current.values() if e["status"] == "done"]
    return dict(ready=ready, times=times)


def scaling_modes(threads: int) -> List[Mode]:
    """The modes measured against the folder size: ``tools/infer.py`` as it is and the
    fastest layout on this machine, ``threads`` single-thread ranks."""
    return [m for m in default_modes(threads) if m.name == REFERENCE or (m.ranks or 0) > 1]


def run_scaling(
    config: str,
    tools_dir: str,
    work_dir: str,
    counts: Sequence[int] = SCALING_COUNTS,
    threads: int = 2,
    checkpoint: str = "random",
    progress: bool = True,
    port: int = 29560,
) -> Dict[str, Any]:
    """Segment generated folders of each size in ``counts`` with :func:`scaling_modes`
    (outputs written); per (mode, size) the figures of :func:`run_throughput`'s rows and the
    :func:`cost_curve`. Does the cost per image stay flat as the folder grows?"""
    if threads < 1 or not counts or min(counts) < CHUNKS:
        raise ValueError(f"need threads >= 1 and counts >= {CHUNKS}, got {threads}, {counts}")
    start_env = environment("cpu")
    os.makedirs(work_dir, exist_ok=True)
    if checkpoint == "random":
        checkpoint = save_random_checkpoint(config, osp.join(work_dir, "random.pth"))
    modes = scaling_modes(threads)
    rows: List[Dict[str, Any]] = []
    bar = Progress(len(counts) * len(modes), enabled=progress)
    for count in counts:
        folder = osp.join(work_dir, f"images_{count}")
        make_images(folder, count)
        for mode in modes:
            out_dir = osp.join(work_dir, "out", f"scaling_{count}_{modes.index(mode)}")
            shutil.rmtree(out_dir, ignore_errors=True)
            row: Dict[str, Any] = {"mode": mode.name, "images": count}
            command = _command(mode, tools_dir, config, checkpoint, folder, out_dir)
            row["command"] = " ".join(_short(c) for c in command)
            env = _tool_env(tools_dir, port + len(rows))
            try:
                row.update(_run_tool(command, out_dir, count, env))
                finished = _finish_times(out_dir)
                row["curve"] = cost_curve(finished["ready"], finished["times"])
            except Exception as error:  # reported in its row; the other runs go on
                row["error"] = format_error(error)
            rows.append(row)
            shutil.rmtree(out_dir, ignore_errors=True)  # 20k outputs: keep the disk flat
            bar.update()
    bar.close()
    meta = dict(
        start_env,
        load_average_end=environment("cpu")["load_average"],
        counts=list(counts),
        image_size=f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}",
        config=str(config),
        checkpoint="random (seeded, saved for every run)",
        work_dir=work_dir,
    )
    return dict(meta=meta, rows=rows)


def scaling_table(result: Dict[str, Any]) -> str:
    """Markdown table of ``run_scaling``'s rows."""
    header = ["mode", "images", "img/s", "wall s", "ms/img first 10 %", "ms/img last 10 %"]
    header.append("last / first")
    body = []
    for row in result["rows"]:
        if "img_s" not in row:
            body.append([row["mode"], str(row["images"]), "-", "-", "-", "-", row["error"]])
            continue
        body.append(
            [
                row["mode"],
                str(row["images"]),
                f"{row['img_s']:.1f}",
                f"{row['wall_s']:.1f}",
                f"{row['first_ms']:.1f}",
                f"{row['last_ms']:.1f}",
                f"{row['last_ms'] / row['first_ms']:.2f}",
            ]
        )
    return markdown_table(header, body, align="lrrrrrr")


def plot_scaling(result: Dict[str, Any], path: str) -> None:
    """Cost per image along the folder (x: the fraction finished, so that folders of every size
    overlay: flat lines at one height = no growth), one line per (mode, size), as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=100)
    counts = result["meta"]["counts"]
    colours = {count: f"C{i}" for i, count in enumerate(counts)}
    styles = ["-", "--", ":", "-."]
    modes = list(dict.fromkeys(row["mode"] for row in result["rows"]))
    for row in result["rows"]:
        if not row.get("curve"):
            continue
        done, cost = zip(*row["curve"])
        ax.plot(
            [100 * d / row["images"] for d in done],
            cost,
            styles[modes.index(row["mode"]) % len(styles)],
            color=colours[row["images"]],
            label=f"{row['mode']}, {row['images']} images ({row['img_s']:.0f} img/s)",
        )
    ax.set_xlabel("position in the folder (% of its images finished)")
    ax.set_ylabel(f"ms per image (folder in {SCALING_POINTS} slices)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    meta = result["meta"]
    ax.set_title(f"Folder inference cost per image against folder size ({meta['cpu']})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
