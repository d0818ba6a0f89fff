"""Scan a config's train/val sets for unusable files, through the config's own data set class
and loading transforms: unreadable images, missing or unreadable label maps, label maps that
are not single-channel or differ in size from their image, label values outside the classes
and the ignore index. One markdown table on stdout; exit status 1 if problems were found, 0 if
none, 2 for bad arguments.

Examples:
  ann-seg check-dataset ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py
  ann-seg check-dataset ann_seg::ann/ann_r50-d8_4xb4-80k_ade20k-512x512.py --splits train
  ann-seg check-dataset CONFIG --workers 8 --json problems.json \\
      --cfg-options train_dataloader.dataset.data_root=data/mine
"""

import argparse
import sys

from ann_seg.mmseg.data_check import check_dataset, default_workers, format_report, write_report
from ann_seg.tools import cli

PROBLEMS_FOUND = 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="config file, ann_seg::<dir>/<file>.py or mmseg::...")
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=["train", "val", "test"],
        default=["train", "val"],
        help="data sets to scan (default: train val)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help=f"parallel reader processes, 0: in this process (default {default_workers()})",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_cfg_options_argument(parser)
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    return args


def main(argv=None):
    args = parse_args(argv)
    report = check_dataset(
        args.config,
        splits=list(dict.fromkeys(args.splits)),
        workers=args.workers,
        progress=not args.no_progress,
        cfg_options=args.cfg_options,
    )
    print(format_report(report))
    if args.json:
        write_report(report, args.json)
        print(f"report: {args.json}")
    return PROBLEMS_FOUND if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
