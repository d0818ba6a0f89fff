"""The context-head study on the built-in long-range set: our heads (FCN baseline, NL, CGNL,
APNB only, ANN) and mmseg's own (PSP, DNL, GC, DA, CC, ISA, EMA, OCR, NLHead, ANNHead) trained
with the same backbone, data, loss, schedule and seeds; a table of mIoU with 95 % confidence
intervals, plateau escapes, training time and the inference cost of each model, a Pareto plot,
and a sweep over the distance between the cue band and the objects.

Time on a 2-core CPU (measured on an Intel Xeon): one run (800 iterations, 400 images of 64x128)
takes 117-193 s with 1 thread while another run shares the machine (--jobs 2); the full study
(120 runs) took 3 h 23 min of training, --quick (16 runs, data generation and cost
measurement included) 19 min 11 s.

Each finished (distance, head, seed) run is stored under WORK_DIR/runs/; running the same
command again trains only what is missing (a killed study loses only the runs in flight).
Outputs: WORK_DIR/results.md, results.json, pareto.png, sweep.png, miou_curves.png. The sweep
reports every finished run of the study's seeds at its distances (seeds added to one point by an
earlier invocation included; the study's own distance with all its seeds).

Examples:
  python -m research.compare_heads             # full study: 15 heads x 5 seeds + sweep
  python -m research.compare_heads --quick     # 4 heads x 2 seeds + a 3-point sweep
  python -m research.compare_heads --heads fcn ann --seeds 0 1 --no-sweep
  python -m research.compare_heads --sweep-distances 0.6 --sweep-seeds 1 2  # 0.6·H, 2 seeds
  python -m research.compare_heads --heads fcn ann --seeds 0 --max-iters 4 --val-interval 2 \\
      --num-train 8 --num-val 4 --sweep-distances 0.2 --cost-shape 64 128 \\
      --data-root /tmp/cmp_data --work-dir /tmp/cmp   # seconds
"""

import argparse
import sys

from ann_seg.inference.threads import choose_threads
from ann_seg.tools import cli
from research.head_study import (
    HEADS,
    QUICK_PRESET,
    SWEEP_DISTANCES,
    StudySettings,
    compare_heads,
    results_table,
)

QUICK = QUICK_PRESET


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"preset: heads {' '.join(QUICK['heads'])}, seeds 0 1, sweep distances 0.1 0.4 0.6 "
        "(options given explicitly win)",
    )
    parser.add_argument("--heads", nargs="+", choices=list(HEADS), help="heads (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default 0 1 2 3 4)")
    parser.add_argument("--max-iters", type=int, default=800, help="iterations (default 800)")
    parser.add_argument(
        "--val-interval", type=int, default=100, help="validate every N iterations (default 100)"
    )
    parser.add_argument("--num-train", type=int, default=400, help="training images (default 400)")
    parser.add_argument("--num-val", type=int, default=60, help="validation images (default 60)")
    parser.add_argument(
        "--sweep-distances",
        nargs="+",
        type=float,
        help="cue-object distances of the sweep, fractions of the height (default "
        f"{' '.join(map(str, SWEEP_DISTANCES))}; the study itself is at 0.4)",
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the distance sweep")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: tables and plots of the runs finished so far (a study in progress)",
    )
    parser.add_argument(
        "--sweep-heads",
        nargs="+",
        choices=list(HEADS),
        help="heads of the sweep (default: the study's)",
    )
    parser.add_argument(
        "--sweep-seeds", nargs="+", type=int, default=[0], help="seeds the sweep trains (default 0)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs trained at once, each in its own process (default 2)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (default 1: on 2 cores, 2 runs x 1 thread "
        "train faster than 1 run x 2)",
    )
    parser.add_argument(
        "--cost-shape",
        nargs=2,
        type=int,
        default=[512, 1024],
        metavar=("H", "W"),
        help="input size of the latency/memory/FLOPs measurement (default 512 "
        "1024: 64x128 features, those of a Cityscapes training crop)",
    )
    parser.add_argument(
        "--cost-repeat",
        type=int,
        default=5,
        help="timed rounds of the cost measurement (default 5)",
    )
    parser.add_argument(
        "--data-root",
        default="data/synthetic_long_range_64x128",
        help="built-in data set at distance 0.4, generated if absent; the sweep's sets go "
        "beside it as ROOT_d0.10 etc. (default data/synthetic_long_range_64x128)",
    )
    parser.add_argument(
        "--work-dir",
        default="work_dirs/compare_heads",
        help="runs, results and plots (default work_dirs/compare_heads)",
    )
    cli.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    choose_threads(None)  # this process's (the cost measurement); each run sets its own
    preset = QUICK if args.quick else {}
    sweep = (
        []
        if args.no_sweep
        else args.sweep_distances or preset.get("sweep_distances", list(SWEEP_DISTANCES))
    )
    settings = StudySettings(
        heads=args.heads or preset.get("heads", list(HEADS)),
        seeds=args.seeds or preset.get("seeds", [0, 1, 2, 3, 4]),
        max_iters=args.max_iters,
        val_interval=args.val_interval,
        num_train=args.num_train,
        num_val=args.num_val,
        sweep_distances=sweep,
        sweep_heads=args.sweep_heads,
        sweep_seeds=args.sweep_seeds,
        data_root=args.data_root,
        work_dir=args.work_dir,
        jobs=args.jobs,
        threads_per_job=args.threads,
        cost_shape=tuple(args.cost_shape),
        cost_repeat=args.cost_repeat,
    )
    result = compare_heads(settings, train=not args.report_only)
    print(results_table(result["rows"], result["costs"], settings.cost_shape))
    print(
        f"\n{result['finished']}/{result['planned']} runs finished; results, plots: "
        f"{settings.work_dir}"
    )
    for error in result["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    cli.quiet_warnings()
    sys.exit(cli.run(main))
