"""Train FCN (local baseline), NL, CGNL, APNB-only and ANN heads under one budget on the
built-in long-range set; print a table of mIoU (mean +- std over seeds) and plot the curves.

The default run (5 heads x 3 seeds x 400 iterations on 400 training images of 64x128) takes
about 20 minutes on a 2-core CPU (19.5 min measured, idle machine). Results go to
WORK_DIR/results.json and results.md, the plot to WORK_DIR/miou_curves.png.

Examples:
  tools/compare_heads.py
  tools/compare_heads.py --heads fcn ann --seeds 0 --max-iters 150   # about 3 minutes
  tools/compare_heads.py --heads fcn ann --seeds 0 --max-iters 4 --val-interval 2 \\
      --num-train 8 --num-val 4 --data-root /tmp/cmp_data --work-dir /tmp/cmp   # seconds
"""

import argparse
import sys

from ann_seg import cli
from ann_seg.benchmark.compare import HEADS, compare_heads, results_table
from ann_seg.inference.threads import add_threads_argument, choose_threads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--heads",
        nargs="+",
        default=list(HEADS),
        choices=list(HEADS),
        help=f"heads to train (default {' '.join(HEADS)})",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)"
    )
    parser.add_argument(
        "--max-iters", type=int, default=400, help="iterations per run (default 400)"
    )
    parser.add_argument(
        "--val-interval", type=int, default=100, help="validate every N iterations (default 100)"
    )
    parser.add_argument(
        "--num-train", type=int, default=400, help="training images generated (default 400)"
    )
    parser.add_argument(
        "--num-val", type=int, default=60, help="validation images generated (default 60)"
    )
    parser.add_argument(
        "--data-root",
        default="data/synthetic_long_range_64x128",
        help="built-in data set, generated if absent (default data/synthetic_long_range_64x128)",
    )
    parser.add_argument(
        "--work-dir",
        default="work_dirs/compare_heads",
        help="runs, results and plot (default work_dirs/compare_heads)",
    )
    parser.add_argument("--plot", help="PNG path (default WORK_DIR/miou_curves.png)")
    add_threads_argument(parser)
    cli.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    choose_threads(args.threads)
    result = compare_heads(
        args.heads,
        args.seeds,
        args.max_iters,
        args.val_interval,
        args.data_root,
        args.work_dir,
        num_train=args.num_train,
        num_val=args.num_val,
        plot=args.plot,
    )
    print(results_table(result["rows"]))
    return 0


if __name__ == "__main__":
    cli.quiet_warnings()
    sys.exit(cli.run(main))
