"""APNB vs the non-local block family, as in the ANN paper's efficiency comparison.

    python tools/benchmark_blocks.py [--shape H W] [--rows NAME ...] [--repeat N] [--warmup N]
        [--max-memory-gb G] [--device cpu|cuda] [--json FILE]

Input [B, 2048, H, W] (default 128x256, the paper's "256x128"), key/value channels 256, eval
mode, no_grad; time and peak memory minus an identity block's, ratios against the non-local
block. The logic lives in ``ann_seg.benchmark.blocks``; see docs/benchmark.md.
"""

import argparse
import sys


def parse_args(argv=None):
    from ann_seg.benchmark.blocks import BLOCK_NAMES, DEFAULT_SHAPE

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--shape', nargs=2, type=int, metavar=('H', 'W'),
                        default=list(DEFAULT_SHAPE), help='feature map size (default 128 256)')
    parser.add_argument('--rows', nargs='+', choices=BLOCK_NAMES, metavar='NAME',
                        help=f'blocks to measure (default all): {", ".join(BLOCK_NAMES)}')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--in-channels', type=int, default=2048)
    parser.add_argument('--key-channels', type=int, default=256)
    parser.add_argument('--low-channels', type=int, default=1024, help="AFNB's low-level input")
    parser.add_argument('--repeat', type=int, default=10, help='timed rounds')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    parser.add_argument('--max-memory-gb', type=float, default=4.0,
                        help='skip rows whose estimated peak memory exceeds this (0: no limit)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    parser.add_argument('--threads', type=int,
                        help='torch.set_num_threads (1 is steadier on a loaded machine)')
    parser.add_argument('--json', metavar='FILE', help='write the results as JSON')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from ann_seg.benchmark.blocks import BlockDims, run_block_benchmark

    if args.device.startswith('cuda') and not torch.cuda.is_available():
        print(f'error: device {args.device!r} requested but CUDA is not available',
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    dims = BlockDims(args.in_channels, args.key_channels, args.low_channels)
    return run_block_benchmark(
        tuple(args.shape), dims, args.rows, args.batch_size, args.repeat, args.warmup,
        args.device, args.max_memory_gb or None, args.json, progress=not args.no_progress)


if __name__ == '__main__':
    sys.exit(main())
