"""Inference modes side by side on real images: speed against fp32 and effect on the
predictions (pixel agreement of the label maps, logit distance).

A mode is the speed policy's suffixes joined by + (docs/performance.md): fp32 (the reference,
always run), fast (what ann-seg infer --fast runs), fuse, bf16, fp16, cl, amp (autocast on the
unmodified model: mmseg's AMP), e.g. fuse+bf16+cl. A low precision this CPU does not compute
natively (no AVX512-BF16/AMX) is emulated, slow: the output says which. CHECKPOINT "random":
seeded random weights.

Examples:
  ann-seg benchmark-inference ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \\
      work_dirs/demo/iter_600.pth data/synthetic_long_range/leftImg8bit/val --recursive \\
      --modes fp32 fuse bf16 amp fast
  ann-seg benchmark-inference CONFIG random images/ --max-images 3 --json modes.json
"""

import argparse
import sys

from ann_seg.benchmark.inference_modes import compare_inference_modes, describe, modes_table
from ann_seg.benchmark.report import write_json
from ann_seg.inference.threads import add_threads_argument, choose_threads
from ann_seg.tools import cli

DEFAULT_MODES = ["fp32", "fuse", "amp", "fast"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="config file, ann_seg::<dir>/<file>.py or mmseg::...")
    parser.add_argument(
        "checkpoint",
        help="checkpoint file, mmseg model-zoo URL, published model name (ann-seg models), or "
        '"random" for random weights',
    )
    parser.add_argument("input", help="image, folder or list file (as ann-seg infer)")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=DEFAULT_MODES,
        metavar="MODE",
        help="modes to compare; fp32 is always run: it is the reference "
        f"(default {' '.join(DEFAULT_MODES)})",
    )
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--max-images", type=int, help="use the first N images only (default all)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed runs per mode on the first image (default 1)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_threads_argument(parser)
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    cli.add_cfg_options_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    choose_threads(args.threads)
    try:
        result = compare_inference_modes(
            args.config,
            args.checkpoint,
            args.input,
            args.modes,
            device=args.device,
            max_images=args.max_images,
            warmup=args.warmup,
            cfg_options=args.cfg_options,
            recursive=args.recursive,
            progress=not args.no_progress,
        )
    except ValueError as error:  # bad option values (known errors go to cli.run)
        if args.debug or isinstance(error, cli.KNOWN_ERRORS):
            raise
        print(f"error: {error}", file=sys.stderr)
        return cli.USAGE_ERROR
    print(describe(result))
    print()
    print(modes_table(result))
    for failure in result["meta"]["failures"]:
        print(f"skipped {failure['name']}: {failure['reason']}", file=sys.stderr)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
