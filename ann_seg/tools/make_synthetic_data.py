"""Generate the built-in long-range-context segmentation set (deterministic by seed).

Each image has a coloured cue band along its top whose hue (one of K) is the class of every
grey striped object in the image; the objects lie at least 0.4 H below the band, so a pixel's
class can only be told from context that far away. Labels: 0 background, 1..K the object
classes. Generating again with the same parameters into a complete set is a no-op.

Layouts (what mmseg's CityscapesDataset / ADE20KDataset read):
  cityscapes  ROOT/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png (PNG images) and
              ROOT/gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png (ids 0..K),
              with K <= 18 also <name>_gtFine_polygons.json and _gtFine_labelIds.png as
              Cityscapes ships them (ann-seg prepare-data cityscapes ROOT rebuilds the
              labelTrainIds from the polygons)
  ade20k      ROOT/images/{training,validation}/ADE_*.jpg (JPEG, quality 95) and
              ROOT/annotations/{training,validation}/ADE_*.png (id + 1: reduce_zero_label)

Defaults: cityscapes layout, 200 training and 50 validation images of 128x256, K = 4 classes,
seed 0 (the demo, ann-seg demo, writes 400 + 60 to data/synthetic_long_range).

Examples:
  ann-seg make-data data/synthetic_cityscapes
  ann-seg make-data data/synthetic_ade --layout ade20k --num-train 8 --num-val 4
  ann-seg make-data data/synthetic_512x1024 --num-train 1 --num-val 3 --size 512 1024
"""

import argparse
import json
import sys

from ann_seg.mmseg.synthetic import LAYOUTS, generate_long_range_dataset
from ann_seg.tools import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", help="directory the data set is written to")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="cityscapes",
        help="on-disk layout, see above (default cityscapes)",
    )
    parser.add_argument("--num-train", type=int, default=200, help="training images (default 200)")
    parser.add_argument("--num-val", type=int, default=50, help="validation images (default 50)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(128, 256),
        metavar=("H", "W"),
        help="image size, at least 32 32 (default 128 256)",
    )
    parser.add_argument(
        "--num-classes", type=int, default=4, help="number of object classes K (default 4)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if up to date")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cli.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = generate_long_range_dataset(
            args.root,
            layout=args.layout,
            num_train=args.num_train,
            num_val=args.num_val,
            size=tuple(args.size),
            num_classes=args.num_classes,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except ValueError as error:  # bad sizes or counts: a usage error
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return cli.USAGE_ERROR
    status = "generated" if summary["generated"] else "up to date, skipped"
    splits = ", ".join(
        f"{split}: {info['num_samples']}" for split, info in summary["splits"].items()
    )
    print(f"{summary['root']} ({summary['layout']}, {splits}): {status}")
    print(json.dumps({"classes": summary["classes"], "geometry": summary["geometry"]}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
