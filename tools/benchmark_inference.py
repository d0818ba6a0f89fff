"""Inference modes side by side on real images: speed against float32 and effect on the
predictions (pixel agreement of the label maps, logit distance).

    python tools/benchmark_inference.py CONFIG CHECKPOINT INPUT [--modes float32 fuse ...]
        [--recursive] [--max-images N] [--warmup N] [--device D] [--threads T] [--json FILE]

Modes: float32 (reference), fuse (BatchNorm and attention folding, channels-last), bf16 and
fuse+bf16 (autocast; bfloat16 is emulated, slow, on CPUs without AVX512-BF16/AMX). CHECKPOINT
``random`` uses seeded random weights (timing and numerics of architectures without a trained
checkpoint). The logic lives in ``ann_seg.benchmark.inference_modes``; see docs/benchmark.md.
"""
import argparse
import sys

from mmengine.config import DictAction


def parse_args(argv=None):
    from ann_seg.benchmark.inference_modes import MODES

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config file (or mmseg::<name>.py)')
    parser.add_argument('checkpoint', help='checkpoint file, or "random" for random weights')
    parser.add_argument('input', help='image, folder or list file (as tools/infer.py)')
    parser.add_argument('--modes', nargs='+', default=['float32', 'fuse', 'fuse+bf16'],
                        choices=list(MODES), help='modes to compare (float32 is always run: '
                        'it is the reference)')
    parser.add_argument('--recursive', action='store_true', help='descend into sub-folders')
    parser.add_argument('--max-images', type=int, help='use the first N images only')
    parser.add_argument('--warmup', type=int, default=1,
                        help='untimed runs per mode on the first image (default 1)')
    parser.add_argument('--device', default='cpu', help='torch device (default cpu)')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    parser.add_argument('--json', metavar='FILE', help='write the results as JSON')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. test_pipeline.1.scale="(1024,512)"')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from ann_seg.apis.inference import InferenceInputError, ModelLoadError
    from ann_seg.benchmark.inference_modes import compare_inference_modes, describe, modes_table
    from ann_seg.benchmark.report import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = compare_inference_modes(
            args.config, args.checkpoint, args.input, args.modes, device=args.device,
            max_images=args.max_images, warmup=args.warmup, cfg_options=args.cfg_options,
            recursive=args.recursive, progress=not args.no_progress)
    except (InferenceInputError, ModelLoadError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(describe(result))
    print()
    print(modes_table(result))
    for failure in result['meta']['failures']:
        print(f"skipped {failure['name']}: {failure['reason']}", file=sys.stderr)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == '__main__':
    sys.exit(main())
