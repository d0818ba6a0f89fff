"""Heat maps of where AFNB and APNB attend for chosen query pixels of an image.

Each block's softmax weights over its pyramid anchors are spread over the anchors' bin regions
and drawn over the image: one row per point, one column per block (--levels adds one per pyramid
level). The model must have an APNB or AFNB (an ANN or APNB head). See docs/inference.md.

Examples:
  ann-seg visualize-attention ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \\
      work_dirs/demo/iter_600.pth IMAGE.png --points 120,100 40,90 --out attention.png
  ann-seg visualize-attention CONFIG CHECKPOINT image.png --points 10,20 --levels
"""

import argparse
import sys

from ann_seg.inference.attention_maps import visualize_attention
from ann_seg.tools import cli


def parse_point(text: str):
    try:
        x, y = (int(round(float(v))) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected X,Y (pixel coordinates), got {text!r}"
        ) from None
    return x, y


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="config file, ann_seg::<dir>/<file>.py or mmseg::...")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("image", help="image file")
    parser.add_argument(
        "--points",
        nargs="+",
        type=parse_point,
        required=True,
        metavar="X,Y",
        help="query pixels in image coordinates (x = column, y = row)",
    )
    parser.add_argument("--out", default="attention.png", help="output PNG (default attention.png)")
    parser.add_argument("--levels", action="store_true", help="add one column per pyramid level")
    parser.add_argument("--device", help="torch device (default cuda:0 if available, else cpu)")
    cli.add_cfg_options_argument(parser)
    cli.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        blocks = visualize_attention(
            args.config,
            args.checkpoint,
            args.image,
            args.points,
            args.out,
            device=args.device,
            levels=args.levels,
            cfg_options=args.cfg_options,
        )
    except ValueError as error:  # a point outside the image, a model without APNB/AFNB
        if args.debug or isinstance(error, cli.KNOWN_ERRORS):
            raise
        print(f"error: {error}", file=sys.stderr)
        return cli.USAGE_ERROR
    names = ", ".join(block.name for block in blocks)
    print(f"attention of {names} for {len(args.points)} point(s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
