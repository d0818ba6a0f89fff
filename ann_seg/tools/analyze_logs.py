"""Plot training curves (loss, learning rate, validation mIoU, ...) from mmengine's logs.

Reads WORK_DIR/<timestamp>/vis_data/scalars.json (mmengine's LocalVisBackend) of one or more
work dirs, or such files; the runs of a resumed work dir are joined in time order (a later
run's step wins). One panel per key against the iteration, one line per work dir; validation
metrics (mIoU, mAcc, aAcc) get a marker per validation. Prints each curve's last value (and the
best mIoU/mAcc/aAcc). Needs matplotlib only (mmseg's analyze_logs.py needs seaborn and pandas
and reads mmseg 0.x logs). The figure is written atomically.

Examples:
  ann-seg analyze-logs work_dirs/demo --out work_dirs/demo/curves.png
  ann-seg analyze-logs work_dirs/compare_heads/ann_seed0 work_dirs/compare_heads/fcn_seed0 \\
      --keys loss mIoU --out ann_vs_fcn.png
  ann-seg analyze-logs work_dirs/demo/20240101_120000/vis_data/scalars.json --keys decode.acc_seg
"""

import argparse
import glob
import json
import math
import os.path as osp
import sys
from typing import Dict, List, Tuple

from ann_seg.io import pyplot, save_figure
from ann_seg.tools import cli

DEFAULT_KEYS = ["loss", "lr", "mIoU"]
VAL_KEYS = ("mIoU", "mAcc", "aAcc")
Curve = List[Tuple[int, float]]


def find_scalars(path: str) -> List[str]:
    """``path`` itself if it is a file, else its runs' ``*/vis_data/scalars.json`` in time
    order (mmengine names the run folders by timestamp)."""
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise FileNotFoundError(f"no such work dir or scalars.json: {path}")
    found = sorted(glob.glob(osp.join(path, "*", "vis_data", "scalars.json")))
    if not found:
        found = sorted(glob.glob(osp.join(path, "vis_data", "scalars.json")))
    if not found:
        raise FileNotFoundError(f"{path} has no <timestamp>/vis_data/scalars.json")
    return found


def read_curves(files: List[str]) -> Dict[str, Curve]:
    """``{key: [(step, value), ...]}`` over ``files`` (in order; a later file's step wins).
    Training and validation records both carry ``time``/``data_time``: those of validation
    records are kept as ``val/time``, ``val/data_time``."""
    by_key: Dict[str, Dict[int, float]] = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}, line {number}: not JSON ({error})") from None
                step = record.get("step", record.get("iter"))
                if step is None:
                    continue
                is_val = any(key in record for key in VAL_KEYS)
                for key, value in record.items():
                    if key in ("step", "iter", "epoch") or not isinstance(value, (int, float)):
                        continue
                    if is_val and key not in VAL_KEYS:
                        key = f"val/{key}"
                    by_key.setdefault(key, {})[int(step)] = float(value)
    return {key: sorted(points.items()) for key, points in by_key.items()}


def label_of(path: str) -> str:
    """The work dir's name (for ``.../WORK/<ts>/vis_data/scalars.json``: ``WORK``)."""
    path = osp.normpath(path)
    if osp.isfile(path):
        path = osp.dirname(osp.dirname(osp.dirname(path)))
    return osp.basename(path) or path


def summary_line(label: str, key: str, curve: Curve) -> str:
    step, value = curve[-1]
    text = f"{label}: {key} {value:.6g} at iteration {step} ({len(curve)} points)"
    if key in VAL_KEYS:
        best_step, best = max(curve, key=lambda point: point[1])
        text += f", best {best:.2f} at iteration {best_step}"
    return text


def plot_curves(logs: Dict[str, Dict[str, Curve]], keys: List[str], out: str, title: str):
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415  (heavy, only for the figure)

    figure, axes = plt.subplots(
        len(keys), 1, figsize=(7.0, 2.4 * len(keys) + 0.4), sharex=True, squeeze=False
    )
    for ax, key in zip(axes[:, 0], keys):
        for label, curves in logs.items():
            if key not in curves:
                continue
            steps, values = zip(*curves[key])
            marker = "o" if key in VAL_KEYS or len(steps) < 20 else None
            ax.plot(steps, values, marker=marker, markersize=3, linewidth=1.0, label=label)
        if key == "lr" or key.endswith("lr"):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if len(logs) > 1:
            ax.legend(fontsize="small")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1, 0].set_xlabel("iteration")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, out, dpi=100)
    plt.close(figure)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "logs", nargs="+", metavar="WORK_DIR", help="work dirs or scalars.json files"
    )
    parser.add_argument(
        "--keys",
        nargs="+",
        default=DEFAULT_KEYS,
        help="scalars to plot, one panel each, e.g. loss decode.loss_ce aux.loss_ce lr "
        f"mIoU mAcc (default {' '.join(DEFAULT_KEYS)})",
    )
    parser.add_argument(
        "--out", default="training_curves.png", help="output image (default training_curves.png)"
    )
    parser.add_argument("--title", default="", help="figure title (default none)")
    cli.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logs = {}
    try:
        for path in args.logs:
            label = label_of(path)
            while label in logs:
                label += "'"
            logs[label] = read_curves(find_scalars(path))
        missing = [k for k in args.keys if not any(k in curves for curves in logs.values())]
        if missing:
            known = sorted({k for curves in logs.values() for k in curves})
            raise ValueError(f"no scalar {missing} in the logs; they have: {', '.join(known)}")
    except ValueError as error:  # a bad key or a damaged file
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return cli.USAGE_ERROR
    for label, curves in logs.items():
        for key in args.keys:
            if key in curves and not math.isnan(curves[key][-1][1]):
                print(summary_line(label, key, curves[key]))
    plot_curves(logs, args.keys, args.out, args.title)
    print(f"{len(args.keys)} panel(s) of {len(logs)} log(s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
