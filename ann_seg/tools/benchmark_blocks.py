"""APNB vs the non-local block family, after the ANN paper's efficiency comparison.

Input [B, 2048, H, W] (default 128x256, the paper's "256x128"), key/value channels 256, eval
mode, no_grad; time and peak memory minus an identity block's, ratios against the non-local
block. The paper's figures are quoted only beside the pair it measured (apnb_attention vs
nl_attention, at 256x128 on a GPU). Exit status 1 if a row failed (skipped rows are fine).
See docs/benchmarks.md.

Examples:
  ann-seg benchmark-blocks --shape 64 128 --repeat 3 --warmup 1 --threads 1
  ann-seg benchmark-blocks --rows nl_attention apnb_attention --json blocks.json
  ann-seg benchmark-blocks --shape 128 256 --rows nl_explicit apnb --max-memory-gb 10
"""

import argparse
import sys

import torch

from ann_seg.benchmark.blocks import BLOCK_NAMES, DEFAULT_SHAPE, BlockDims, run_block_benchmark
from ann_seg.inference.threads import add_threads_argument, choose_threads
from ann_seg.tools import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shape",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=list(DEFAULT_SHAPE),
        help=f"feature map size (default {DEFAULT_SHAPE[0]} {DEFAULT_SHAPE[1]})",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=BLOCK_NAMES,
        metavar="NAME",
        help=f"blocks to measure (default all): {', '.join(BLOCK_NAMES)}",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="batch (default 1)")
    parser.add_argument("--in-channels", type=int, default=2048, help="C (default 2048)")
    parser.add_argument(
        "--key-channels", type=int, default=256, help="key/value channels (default 256)"
    )
    parser.add_argument(
        "--low-channels", type=int, default=1024, help="AFNB's low-level input (default 1024)"
    )
    parser.add_argument("--repeat", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        default=4.0,
        help="skip rows whose estimated peak memory exceeds this (default 4; 0: no limit)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    add_threads_argument(parser)
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: device {args.device!r} requested but CUDA is not available", file=sys.stderr)
        return cli.USAGE_ERROR
    choose_threads(args.threads)
    return run_block_benchmark(
        args.json,
        shape=tuple(args.shape),
        dims=BlockDims(args.in_channels, args.key_channels, args.low_channels),
        rows=args.rows,
        batch_size=args.batch_size,
        repeat=args.repeat,
        warmup=args.warmup,
        device=args.device,
        max_memory_gb=args.max_memory_gb or None,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    sys.exit(cli.run(main))
