"""List mmseg's published ANN and NonLocal models that ann_seg runs by name: the ann_seg config
that reproduces each, mmseg's reported mIoU (single scale, multi-scale + flip), training memory
per GPU and inference fps (V100, as mmseg measured them), and whether it is in the download
cache already. A name (either column) is a checkpoint argument of ann-seg infer, test and
benchmark-inference: downloaded once, checked, converted in memory.

Examples:
  ann-seg models
  ann-seg models --dataset ade20k --family nonlocal
  ann-seg infer ann_seg::ann/ann_r101-d8_4xb2-40k_cityscapes-769x769.py \\
      ann_r101-d8_769x769_40k_cityscapes photos/
  ann-seg models --json models.json
"""

import argparse
import os.path as osp
import sys
from dataclasses import asdict
from urllib.parse import urlparse

from ann_seg.io import atomic_write_json, markdown_table
from ann_seg.mmseg.model_zoo import cache_dir, published_models
from ann_seg.tools import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", choices=["cityscapes", "ade20k"], help="only this data set (default: all)"
    )
    parser.add_argument(
        "--family", choices=["ann", "nonlocal"], help="only this head (default: both)"
    )
    parser.add_argument("--urls", action="store_true", help="print the download URLs too")
    parser.add_argument("--json", metavar="FILE", help="also write the listed entries as JSON")
    cli.add_debug_argument(parser)
    return parser


def _figure(value, spec: str = "g") -> str:
    return "-" if value is None else format(value, spec)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    models = [
        m
        for m in published_models()
        if args.dataset in (None, m.dataset) and args.family in (None, m.family)
    ]
    rows = []
    for m in models:
        cached = osp.isfile(osp.join(cache_dir(), osp.basename(urlparse(m.url).path)))
        row = [
            m.name,
            m.config,
            f"{m.mIoU:.2f}",
            _figure(m.mIoU_ms_flip, ".2f"),
            _figure(m.memory_gb),
            _figure(m.fps),
            "yes" if cached else "",
        ]
        rows.append(row + ([m.url] if args.urls else []))
    header = ["name", "ann_seg config", "mIoU", "ms+flip", "mem GB", "fps", "cached"]
    header += ["url"] if args.urls else []
    print(markdown_table(header, rows, align="ll" + "r" * 4 + "l" * (len(header) - 6)))
    print(
        f"\n{len(models)} models; mIoU, memory and fps as mmseg reports them (V100); "
        f"download cache: {cache_dir()}"
    )
    if args.json:
        atomic_write_json(args.json, [asdict(m) for m in models])
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
