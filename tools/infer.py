"""Segment an image, a folder (optionally recursive) or a list of paths with a checkpoint.

Writes label maps (palette PNG, exact class ids), optional overlays and logits mirroring the input
tree under --out-dir, and summary.json. Exit status: 0 all done, 1 some images failed (listed on
stderr), 2 nothing could run (bad input, config or checkpoint). See docs/inference.md.
"""
import argparse
import sys

from mmengine.config import DictAction


def parse_args(argv=None):
    from ann_seg.apis.inference import DEFAULT_MAX_PIXELS, DEFAULT_OUT_DIR, IMAGE_EXTENSIONS

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (or mmseg::<name>.py)')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('input', help='image, folder, or list file (.txt/.lst/.list, one path '
                        'per line, relative to the list file)')
    parser.add_argument('--out-dir', default=DEFAULT_OUT_DIR,
                        help=f'output folder (default {DEFAULT_OUT_DIR})')
    parser.add_argument('--overlay', action='store_true', help='also write colour overlays')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='overlay opacity of the label colours, in (0, 1] (default 0.5)')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per forward (consecutive images of equal size)')
    parser.add_argument('--device', help='torch device (default cuda:0 if available, else cpu)')
    parser.add_argument('--recursive', action='store_true', help='descend into sub-folders')
    parser.add_argument('--ext', nargs='+', metavar='EXT',
                        help='image extensions to take from folders (default '
                        f'{" ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)})')
    parser.add_argument('--save-logits', nargs='?', const='npy', choices=['npy', 'npz'],
                        help='also write float16 logits (C, H, W): .npy (default) or .npz')
    parser.add_argument('--force', action='store_true',
                        help='segment again images whose outputs already exist')
    parser.add_argument('--max-pixels', type=float, default=DEFAULT_MAX_PIXELS,
                        help='skip (and report) images with more pixels (default '
                        f'{DEFAULT_MAX_PIXELS:.0e})')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.test_cfg.mode=slide')
    parser.add_argument('--fuse', action='store_true',
                        help='fast mode: BatchNorms and attention output projections folded '
                        'into convolutions, channels-last (same predictions up to rounding)')
    parser.add_argument('--amp', nargs='?', const='auto', choices=['auto', 'on', 'off'],
                        default='off', help='autocast: "auto" (bare --amp) where the device '
                        'computes low precision natively (CUDA float16; bfloat16 on CPUs '
                        'with AVX512-BF16/AMX), "on" always (bfloat16 is emulated, slow, on '
                        'other CPUs), "off" (default)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ann_seg.apis.inference import InferenceInputError, ModelLoadError, run_inference

    try:
        summary = run_inference(
            args.config, args.checkpoint, args.input, args.out_dir, overlay=args.overlay,
            opacity=args.opacity, batch_size=args.batch_size, device=args.device,
            recursive=args.recursive, extensions=args.ext, save_logits=args.save_logits,
            force=args.force, max_pixels=int(args.max_pixels), cfg_options=args.cfg_options,
            progress=not args.no_progress, fuse=args.fuse, amp=args.amp)
    except (InferenceInputError, ModelLoadError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    counts = summary['counts']
    print(f'{counts["processed"]} segmented, {counts["skipped"]} already done, '
          f'{counts["failed"]} failed; outputs and summary.json in {args.out_dir}')
    if summary['failures']:
        print(f'{counts["failed"]} of {counts["images"]} images failed:', file=sys.stderr)
        for failure in summary['failures']:
            print(f'  {failure["name"]}: {failure["reason"]}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
