"""The main job on the built-in synthetic data set: generate, train, evaluate, predict.

Writes the data set (Cityscapes layout) to --data-root, trains the demo config (ANN on a
ResNet-18-D8 from scratch, 600 iterations) through mmengine's Runner into --work-dir, resuming
if interrupted, evaluates mIoU on the validation split, writes predicted label maps and
overlays, and WORK_DIR/summary.json (the mIoU the README quotes). A second run skips what is
done. scripts/setup.sh runs it; on a 2-core CPU the full run takes about 5 minutes.

Examples:
  ann-seg demo
  ann-seg demo --work-dir /tmp/demo --data-root /tmp/demo_data --num-train 16 --num-val 4 \\
      --max-iters 4   # a smoke run in seconds
"""

import argparse
import os.path as osp
import sys

from ann_seg.demo import DEMO_CONFIG, run_demo
from ann_seg.tools import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        default=DEMO_CONFIG,
        help="config to train (default the packaged demo/ann_r18-d8_1xb8-600it_synthetic-"
        "128x256.py)",
    )
    parser.add_argument(
        "--data-root",
        default="data/synthetic_long_range",
        help="where the data set is written (default data/synthetic_long_range)",
    )
    parser.add_argument(
        "--work-dir",
        default="work_dirs/demo",
        help="checkpoints, logs, predictions, summary.json (default work_dirs/demo)",
    )
    parser.add_argument("--num-train", type=int, default=400, help="training images (default 400)")
    parser.add_argument("--num-val", type=int, default=60, help="validation images (default 60)")
    parser.add_argument(
        "--max-iters", type=int, help="override the config's schedule (default: the config's, 600)"
    )
    parser.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="train, test and segment with --fast (native low precision, channels-last, "
        "folding; docs/performance.md); default off",
    )
    cli.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    summary = run_demo(
        args.config,
        args.data_root,
        args.work_dir,
        args.num_train,
        args.num_val,
        args.max_iters,
        args.seed,
        args.fast,
    )
    timings = summary["timings"]
    print(
        f"data: {summary['num_train']} training and {summary['num_val']} validation images in "
        f"{summary['data_root']} ({timings['data_s']} s)\n"
        f"trained: {summary['checkpoint']} ({timings['train_s']} s)\n"
        f"tested: {timings['test_s']} s; segmented the validation images: "
        f"{timings['inference_s']} s\n"
        f"label maps: {summary['predictions']}; overlays: {summary['overlays']}\n"
        f"summary: {osp.join(args.work_dir, 'summary.json')}\n"
        f"demo mIoU: {summary['metrics'].get('mIoU', float('nan')):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
