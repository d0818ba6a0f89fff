"""Train a segmentor through mmengine's Runner: the arguments and behaviour of mmseg's
tools/train.py, with ann_seg registered.

Examples:
  ann-seg train ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py
  ann-seg train ann_seg::ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py --fast --resume
  ann-seg train CONFIG --cfg-options train_cfg.max_iters=100
  ann-seg train CONFIG --check-data     # ann-seg check-dataset first; exit 1 on problems
  ann-seg train CONFIG --fast           # native low precision, channels-last, fast APNB/AFNB
  ann-seg train CONFIG --fast --checkpoint  # + activation checkpointing: less memory
  ann-seg train CONFIG --precision bf16 # any lever alone (docs/performance.md)
"""

import argparse
import sys

from ann_seg.inference.threads import add_threads_argument, choose_threads
from ann_seg.mmseg import DataCheckError
from ann_seg.mmseg.runner import train
from ann_seg.mmseg.speed import add_speed_arguments, default_device, speed_policy
from ann_seg.tools import cli

DATA_PROBLEMS = 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="config file, ann_seg::<dir>/<file>.py or mmseg::...")
    parser.add_argument(
        "--work-dir", help="logs and checkpoints (default: work_dirs/<config name>)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="resume from the latest checkpoint in the work dir"
    )
    add_speed_arguments(parser, "train")
    parser.add_argument(
        "--check-data",
        action="store_true",
        help="scan the train and val sets first (as ann-seg check-dataset); stop with exit "
        "status 1 if an image or label map is unusable",
    )
    add_threads_argument(parser)
    cli.add_cfg_options_argument(parser)
    cli.add_runner_arguments(parser, "dist-train")
    cli.add_debug_argument(parser)
    return cli.parse_runner_args(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    choose_threads(args.threads)
    try:
        train(
            args.config,
            work_dir=args.work_dir,
            resume=args.resume,
            speed=speed_policy(args, "train", default_device()),
            cfg_options=args.cfg_options,
            launcher=args.launcher,
            verbose=args.verbose,
            check_data=args.check_data,
        )
    except DataCheckError as error:
        print(f"error: {error}", file=sys.stderr)
        return DATA_PROBLEMS
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
