"""Test (and evaluate) a checkpoint: the arguments and behaviour of mmseg's tools/test.py."""

import argparse
import os

from mmengine.config import DictAction


def parse_args():
    parser = argparse.ArgumentParser(description="Test (and evaluate) a segmentor")
    parser.add_argument("config", help="config file path (or mmseg::ann/<name>.py)")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="where the metrics are dumped as json")
    parser.add_argument("--out", help="directory to save predicted label maps")
    parser.add_argument("--show-dir", help="directory to save painted predictions")
    parser.add_argument("--tta", action="store_true", help="test time augmentation")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override config settings"
    )
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm", "mpi"],
        default="none",
        help="job launcher",
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def main():
    args = parse_args()
    from ann_seg.apis import test

    test(
        args.config,
        args.checkpoint,
        work_dir=args.work_dir,
        out=args.out,
        show_dir=args.show_dir,
        tta=args.tta,
        cfg_options=args.cfg_options,
        launcher=args.launcher,
    )


if __name__ == "__main__":
    main()
