"""Folder-inference throughput side by side on generated 64x128 images (--images N, default
1000): mmseg's MMSegInferencer, tools/infer.py sequential and pipelined (--workers 2
--batch-size 4), and tools/dist_infer.sh with 2 ranks x 1 thread and 1 rank x 2 threads;
images/s, cost per image over the first and last 10 %, labels against the sequential loop
(CHECKPOINT defaults to random weights). A research harness of the repository: it runs the
checkout's tools as subprocesses.

Examples (from the repository root):
  python -m research.folder_throughput configs/demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \\
      --images 1000 --threads 2 --json throughput.json
  # --scaling N ...: growing folders (infer and 2 ranks), cost per image along each folder
  python -m research.folder_throughput configs/demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \\
      --scaling 1000 5000 20000 --threads 2 --plot docs/folder_scaling.png
  # --speed: mmseg's inferencer vs ann-seg infer (fp32, --fast) on 512x1024 images, R-101
  python -m research.folder_throughput ann_seg::ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py \\
      --speed --size 512 1024 --images 10 --rounds 2 --threads 2 \\
      --cfg-options "test_pipeline.1.scale=(1024,512)" \\
      "test_dataloader.dataset.pipeline.1.scale=(1024,512)"
  # --loader-grid: --grid-workers x --grid-batch-sizes (default 0 1 2 x 1 4 8)
  python -m research.folder_throughput configs/demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \\
      --loader-grid --images 1000 --rounds 2 --threads 2
"""

import argparse
import os.path as osp
import sys
import tempfile

from ann_seg.benchmark.report import write_json
from ann_seg.inference.threads import add_threads_argument, choose_threads
from ann_seg.tools import cli
from research.throughput import (
    DEFAULT_IMAGES,
    GRID_BATCH_SIZES,
    GRID_WORKERS,
    IMAGE_SIZE,
    SCALING_COUNTS,
    describe_throughput,
    loader_grid_modes,
    plot_scaling,
    run_scaling,
    run_throughput,
    scaling_table,
    speed_modes,
    throughput_table,
)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="config file, ann_seg::<dir>/<file>.py or mmseg::...")
    parser.add_argument(
        "checkpoint", nargs="?", help='checkpoint file, or "random" (default) for random weights'
    )
    parser.add_argument(
        "--images",
        type=int,
        default=DEFAULT_IMAGES,
        help=f"generated images (default {DEFAULT_IMAGES}; e.g. 5000, 20000)",
    )
    parser.add_argument(
        "--scaling",
        nargs="+",
        type=int,
        metavar="N",
        help="instead of the five modes, tools/infer.py and the 2-rank run on "
        f"generated folders of N images each (e.g. {' '.join(map(str, SCALING_COUNTS))}): does "
        "the cost per image stay flat as the folder grows?",
    )
    parser.add_argument(
        "--speed",
        action="store_true",
        help="instead of the five modes, mmseg's inferencer, ann-seg infer in float32 and with "
        "--fast (batch 1 and 4): the speed policy on a folder",
    )
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        default=list(IMAGE_SIZE),
        metavar=("H", "W"),
        help=f"generated image size (default {IMAGE_SIZE[0]} {IMAGE_SIZE[1]})",
    )
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every mode, e.g. test_dataloader.dataset.pipeline.1.scale="
        "(1024,512) for 512x1024 inputs of a Cityscapes config (default none)",
    )
    parser.add_argument(
        "--loader-grid",
        action="store_true",
        help="instead of the five modes, tools/infer.py over every pair of "
        "--grid-workers x --grid-batch-sizes: what the DataLoader workers and batching do",
    )
    parser.add_argument(
        "--grid-workers",
        nargs="+",
        type=int,
        default=list(GRID_WORKERS),
        metavar="W",
        help=f"--loader-grid: --workers values (default {' '.join(map(str, GRID_WORKERS))})",
    )
    parser.add_argument(
        "--grid-batch-sizes",
        nargs="+",
        type=int,
        default=list(GRID_BATCH_SIZES),
        metavar="B",
        help=f"--loader-grid: --batch-size values (default {' '.join(map(str, GRID_BATCH_SIZES))})",
    )
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="--scaling: the cost per image along each folder, as a figure",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of every mode (default 1)")
    parser.add_argument("--work-dir", help="images and outputs (default: a temporary folder)")
    add_threads_argument(parser)
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_debug_argument(parser)
    return parser


def run(args) -> int:
    tools_dir = osp.join(REPO, "tools")
    if args.scaling and args.loader_grid:
        print("error: --scaling and --loader-grid are two different runs", file=sys.stderr)
        return cli.USAGE_ERROR
    if args.scaling:
        return scaling(args, tools_dir)
    threads = choose_threads(args.threads)
    modes = speed_modes(threads) if args.speed else None
    if args.loader_grid:
        try:
            modes = loader_grid_modes(threads, args.grid_workers, args.grid_batch_sizes)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return cli.USAGE_ERROR
    with tempfile.TemporaryDirectory(prefix="ann_seg_throughput_") as scratch:
        result = run_throughput(
            args.config,
            tools_dir,
            args.work_dir or scratch,
            count=args.images,
            threads=threads,
            rounds=args.rounds,
            checkpoint=args.checkpoint or "random",
            progress=not args.no_progress,
            modes=modes,
            size=tuple(args.size),
            cfg_options=args.cfg_options,
        )
    print(describe_throughput(result))
    print()
    print(throughput_table(result))
    if args.json:
        write_json(args.json, result)
    return 1 if any("error" in row for row in result["rows"]) else 0


def scaling(args, tools_dir: str) -> int:
    with tempfile.TemporaryDirectory(prefix="ann_seg_scaling_") as scratch:
        result = run_scaling(
            args.config,
            tools_dir,
            args.work_dir or scratch,
            counts=args.scaling,
            threads=choose_threads(args.threads),
            checkpoint=args.checkpoint or "random",
            progress=not args.no_progress,
        )
    meta = result["meta"]
    print(
        f"generated {meta['image_size']} PNGs, {meta['config']} with {meta['checkpoint']} "
        f"weights, CPU {meta['cpu']} ({meta['cpu_count']} cores, load average "
        f"{meta['load_average']} before, {meta['load_average_end']} after)"
    )
    print()
    print(scaling_table(result))
    if args.plot:
        plot_scaling(result, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        write_json(args.json, result)
    return 1 if any("error" in row for row in result["rows"]) else 0


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli.run(main))
