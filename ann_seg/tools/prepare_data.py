"""Make a downloaded Cityscapes or ADE20K folder ready for the configs, then check it.

cityscapes ROOT (leftImg8bit/ and gtFine/ of leftImg8bit_trainvaltest.zip and
gtFine_trainvaltest.zip): draws every gtFine/<split>/<city>/*_gtFine_polygons.json as
*_gtFine_labelTrainIds.png with cityscapesScripts (pip install 'ann_seg[cityscapes]'), in
parallel, each PNG written atomically; up-to-date PNGs are kept (a re-run after a kill finishes
the rest), --force redraws all. Writes ROOT/{train,val,test}.txt (<city>/<name> per line).
ade20k ROOT (ADEChallengeData2016: images/, annotations/): nothing to convert.

Then checks the data sets as ann_seg's configs read them (ann-seg check-dataset) and the layout:
missing halves (an image without its label or the reverse), unmatched pairs, Cityscapes label
ids where train ids belong, ADE20K annotations already reduced (0-based) where
reduce_zero_label expects 0 = other; one line per problem with its file and the fix. Exit
status 0: ready, 1: problems found, 2: nothing could be done (missing extra, wrong folder).

Examples:
  ann-seg prepare-data cityscapes data/cityscapes
  ann-seg prepare-data ade20k data/ade/ADEChallengeData2016 --workers 8
  ann-seg make-data data/synthetic_cs --num-train 8 --num-val 4 && \\
      ann-seg prepare-data cityscapes data/synthetic_cs --force
"""

import argparse
import sys

from ann_seg.io import atomic_write_json
from ann_seg.mmseg.data_check import default_workers, format_report
from ann_seg.mmseg.layout_check import format_problems
from ann_seg.mmseg.prepare_data import PrepareDataError, prepare, problem_count, summary_lines
from ann_seg.tools import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("layout", choices=["cityscapes", "ade20k"], help="the data set")
    parser.add_argument("root", help="its folder (Cityscapes: leftImg8bit/ and gtFine/)")
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help=f"parallel processes for drawing and reading (default {default_workers()})",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="redraw every labelTrainIds PNG (default: keep those newer than their polygons)",
    )
    parser.add_argument("--no-check", action="store_true", help="convert only, check nothing")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    try:
        result = prepare(
            args.layout,
            args.root,
            workers=args.workers,
            force=args.force,
            check=not args.no_check,
            progress=not args.no_progress,
        )
    except PrepareDataError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return cli.USAGE_ERROR
    for line in summary_lines(result):
        print(line)
    if result.get("data_check"):
        print(format_report(result["data_check"]))
    if "layout" in result:
        layout = result["layout"]
        print(format_problems(layout) if layout else f"{args.layout} layout: no problems found")
    if args.json:
        atomic_write_json(args.json, result)
    problems = problem_count(result)
    if not args.no_check:
        print(f"{args.root}: " + (f"{problems} problem(s)" if problems else "ready"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
