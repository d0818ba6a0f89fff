"""Train a segmentor through mmengine's Runner: the arguments and behaviour of mmseg's
tools/train.py, with ann_seg registered.

Examples:
  tools/train.py configs/demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py
  tools/train.py ann_seg::ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py --amp --resume
  tools/train.py CONFIG --cfg-options train_cfg.max_iters=100
  tools/train.py CONFIG --check-data     # tools/check_dataset.py first; exit 1 on problems
  tools/train.py CONFIG --fast           # same results, fewer operations in APNB/AFNB
  tools/train.py CONFIG --fast-checkpoint  # fast mode + activation checkpointing: less memory
"""

import argparse
import os
import sys

from ann_seg import cli
from ann_seg.mmseg import DataCheckError
from ann_seg.mmseg.runner import train

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
    parser.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: float16 + loss scaling on CUDA; bfloat16 autocast on a CPU with "
        "native bf16 (AVX512-BF16/AMX); elsewhere float32, with a notice",
    )
    fast = parser.add_mutually_exclusive_group()
    fast.add_argument(
        "--fast",
        action="store_const",
        const="on",
        dest="fast",
        help="fast training mode, same computation up to float rounding (default off): "
        "APNB/AFNB output projection merged into the fusion GEMM, and on CUDA a channels-last "
        "model and inputs; checkpoints load into the plain model (config key: custom_hooks="
        "[dict(type='FastTrainingHook')])",
    )
    fast.add_argument(
        "--fast-checkpoint",
        action="store_const",
        const="checkpoint",
        dest="fast",
        help="--fast plus exact activation checkpointing of the backbone's residual blocks "
        "and the attention blocks: less memory, slower steps (default off)",
    )
    parser.set_defaults(fast="off")
    parser.add_argument(
        "--check-data",
        action="store_true",
        help="scan the train and val sets first (as tools/check_dataset.py); stop with exit "
        "status 1 if an image or label map is unusable",
    )
    cli.add_cfg_options_argument(parser)
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm", "mpi"],
        default="none",
        help="job launcher (default none; tools/dist_train.sh sets pytorch)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print the config and environment dump too"
    )
    cli.add_debug_argument(parser)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        train(
            args.config,
            work_dir=args.work_dir,
            resume=args.resume,
            amp=args.amp,
            cfg_options=args.cfg_options,
            launcher=args.launcher,
            verbose=args.verbose,
            check_data=args.check_data,
            fast=args.fast,
        )
    except DataCheckError as error:
        print(f"error: {error}", file=sys.stderr)
        return DATA_PROBLEMS
    return 0


if __name__ == "__main__":
    cli.quiet_warnings()
    sys.exit(cli.run(main))
