"""Benchmark configs side by side: latency, throughput, peak memory, parameters, FLOPs.

    python tools/benchmark.py CONFIG [CONFIG ...] [--shape H W | --shapes H W H W ...]
        [--part model|backbone|head] [--mode infer|train] [--batch-size B] [--repeat N]
        [--warmup N] [--device cpu|cuda] [--amp] [--json FILE] [--plot FILE.png]

CONFIG is a path or an mmseg name (``mmseg::ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py``).
The logic lives in ``ann_seg.benchmark``; see docs/benchmark.md. Exit status 1 if any config
failed (it is still reported, as an error row).
"""

import argparse
import sys

from mmengine.config import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('configs', nargs='+', metavar='CONFIG',
                        help='config files or mmseg::<dir>/<name>.py names; append +fuse (exact '
                        'inference folding) and/or +cl (channels-last) for inference variants')
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument('--shape', nargs=2, type=int, metavar=('H', 'W'),
                       help='input size (default: each config\'s crop size)')
    shape.add_argument('--shapes', nargs='+', type=int, metavar='H W',
                       help='several input sizes H1 W1 H2 W2 ... (e.g. for --plot)')
    parser.add_argument('--part', choices=['model', 'backbone', 'head'], default='model',
                        help='whole EncoderDecoder, backbone alone, or decode head alone on '
                        'synthetic backbone features')
    parser.add_argument('--mode', choices=['infer', 'train'], default='infer',
                        help='infer: eval + no_grad forward; train: forward + backward')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--repeat', type=int, default=10, help='timed rounds')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    parser.add_argument('--threads', type=int,
                        help='torch.set_num_threads (1 is steadier on a loaded machine)')
    parser.add_argument('--amp', action='store_true',
                        help='autocast: bfloat16 on the CPU, float16 on CUDA')
    parser.add_argument('--no-flops', action='store_true',
                        help='skip FLOP counting (it traces one more forward per config)')
    parser.add_argument('--json', metavar='FILE', help='write the results as JSON')
    parser.add_argument('--plot', metavar='FILE.png',
                        help='latency and memory against input size (use with --shapes)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of every config, e.g. model.backbone.depth=50')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--flop-rate', action='store_true',
                        help='report achieved GFLOP/s against this machine\'s float32 conv rate, '
                        'timed in the same interleaved rounds')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from ann_seg.benchmark import BenchmarkSettings, parse_shapes, run_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        settings = BenchmarkSettings(
            part=args.part, mode=args.mode, device=args.device, amp=args.amp,
            batch_size=args.batch_size, repeat=args.repeat, warmup=args.warmup,
            flops=not args.no_flops, flop_rate=args.flop_rate, cfg_options=args.cfg_options)
        shapes = parse_shapes(args.shapes or args.shape)
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    return run_benchmark(args.configs, settings, shapes, json_path=args.json,
                         plot_path=args.plot, progress=not args.no_progress)


if __name__ == '__main__':
    sys.exit(main())
