"""Convert an mmseg ANN (ANNHead) or NonLocal (NLHead) checkpoint into an ann_seg (ANNSegHead,
NLSegHead) checkpoint.

Keeps the backbone and auxiliary head, renames the decode head's modules; with --config, checks
that every tensor of that config's model is present with the right shape. Written atomically;
a checkpoint that is not an mmseg ANN/NonLocal model, truncated, unsafe or of the wrong shapes
is refused (exit status 2) and nothing is written. Not needed to run mmseg's published models:
ann-seg infer/test take their names or URLs and convert in memory (ann-seg models). See
docs/training.md.

Examples:
  ann-seg convert ann_r101-d8_769x769_40k_cityscapes_20200530_025720-059bff28.pth \\
      checkpoints/ann_r101-d8_4xb2-40k_cityscapes-769x769.pth \\
      --config configs/ann/ann_r101-d8_4xb2-40k_cityscapes-769x769.py
  ann-seg convert mmseg_ann.pth ann_seg_ann.pth
"""

import argparse
import sys

from ann_seg.convert import ConversionError, convert_checkpoint
from ann_seg.tools import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", help="mmseg ANN or NonLocal checkpoint (.pth)")
    parser.add_argument("dst", help="output ann_seg checkpoint (written atomically)")
    parser.add_argument(
        "--config",
        help="ann_seg config to check the result against, e.g. "
        "configs/ann/ann_r101-d8_4xb2-40k_cityscapes-769x769.py (default: no check)",
    )
    cli.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        n_in, n_out = convert_checkpoint(args.src, args.dst, args.config)
    except ConversionError as error:  # not an mmseg ANN/NonLocal model, or shapes that do not fit
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return cli.USAGE_ERROR
    checked = f", checked against {args.config}" if args.config else ""
    print(f"converted {args.src} -> {args.dst}: {n_in} tensors in, {n_out} out{checked}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
