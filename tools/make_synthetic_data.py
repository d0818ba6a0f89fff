"""Generate the long-range-context synthetic segmentation data set.

Example::

    python tools/make_synthetic_data.py data/synthetic_cityscapes --layout cityscapes
"""

import argparse
import json

from ann_seg.datasets.synthetic import LAYOUTS, generate_long_range_dataset


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="directory the data set is written to")
    parser.add_argument("--layout", choices=LAYOUTS, default="cityscapes")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=4, help="number of object classes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if up to date")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
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
    status = "generated" if summary["generated"] else "up to date, skipped"
    splits = ", ".join(
        f"{split}: {info['num_samples']}" for split, info in summary["splits"].items()
    )
    print(f"{summary['root']} ({summary['layout']}, {splits}): {status}")
    print(json.dumps({"classes": summary["classes"], "geometry": summary["geometry"]}))


if __name__ == "__main__":
    main()
