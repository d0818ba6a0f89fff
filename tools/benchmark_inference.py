"""Inference modes side by side on real images: speed against float32 and effect on the
predictions (pixel agreement of the label maps, logit distance).

Modes: float32 (reference), fuse (BatchNorm and attention folding, channels-last: what
tools/infer.py --fuse runs), bf16 and fuse+bf16 (autocast; bfloat16 is emulated, slow, on CPUs
without AVX512-BF16/AMX: the output says which this run had). CHECKPOINT "random" uses seeded
random weights (timing and numerics of architectures without a trained checkpoint). See
docs/benchmark.md.

Examples:
  tools/benchmark_inference.py configs/demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \\
      work_dirs/demo/iter_600.pth data/synthetic_long_range/leftImg8bit/val --recursive \\
      --modes float32 fuse bf16 fuse+bf16
  tools/benchmark_inference.py CONFIG random images/ --max-images 3 --json modes.json

--throughput: folder inference throughput instead, on generated 64x128 images (--images N,
default 1000): mmseg's MMSegInferencer, tools/infer.py sequential and pipelined (--workers 2
--batch-size 4), and tools/dist_infer.sh with 2 ranks x 1 thread and 1 rank x 2 threads;
images/s, cost per image over the first and last 10 %, labels against the sequential loop
(INPUT is not used; CHECKPOINT defaults to random):
  tools/benchmark_inference.py configs/demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \\
      --throughput --images 1000 --threads 2 --json throughput.json

--throughput --scaling N ...: the same for growing folders (tools/infer.py and 2 ranks only),
the cost per image along each folder as a figure:
  tools/benchmark_inference.py configs/demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \\
      --throughput --scaling 1000 5000 20000 --threads 2 --plot docs/folder_scaling.png

--throughput --loader-grid: tools/infer.py over --grid-workers x --grid-batch-sizes (default
0 1 2 x 1 4 8), what DataLoader workers and batching do on this machine:
  tools/benchmark_inference.py configs/demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \\
      --throughput --loader-grid --images 1000 --rounds 2 --threads 2
"""

import argparse
import os.path as osp
import sys
import tempfile

from ann_seg import cli
from ann_seg.benchmark.inference_modes import (
    MODES,
    compare_inference_modes,
    describe,
    modes_table,
)
from ann_seg.benchmark.report import write_json
from ann_seg.benchmark.throughput import (
    DEFAULT_IMAGES,
    GRID_BATCH_SIZES,
    GRID_WORKERS,
    SCALING_COUNTS,
    describe_throughput,
    loader_grid_modes,
    plot_scaling,
    run_scaling,
    run_throughput,
    scaling_table,
    throughput_table,
)
from ann_seg.inference.threads import add_threads_argument, choose_threads

DEFAULT_MODES = ["float32", "fuse", "fuse+bf16"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="config file, ann_seg::<dir>/<file>.py or mmseg::...")
    parser.add_argument(
        "checkpoint", nargs="?", help='checkpoint file, or "random" for random weights'
    )
    parser.add_argument("input", nargs="?", help="image, folder or list file (as tools/infer.py)")
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="folder inference throughput of mmseg's inferencer and our loops instead",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=DEFAULT_IMAGES,
        help=f"--throughput: generated images (default {DEFAULT_IMAGES}; e.g. 5000, 20000)",
    )
    parser.add_argument(
        "--scaling",
        nargs="+",
        type=int,
        metavar="N",
        help="--throughput: instead of the five modes, tools/infer.py and the 2-rank run on "
        f"generated folders of N images each (e.g. {' '.join(map(str, SCALING_COUNTS))}): does "
        "the cost per image stay flat as the folder grows?",
    )
    parser.add_argument(
        "--loader-grid",
        action="store_true",
        help="--throughput: instead of the five modes, tools/infer.py over every pair of "
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
        help="--throughput --scaling: the cost per image along each folder, as a figure",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="--throughput: runs of every mode (default 1)"
    )
    parser.add_argument(
        "--work-dir", help="--throughput: images and outputs (default: a temporary folder)"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=DEFAULT_MODES,
        choices=list(MODES),
        help="modes to compare; float32 is always run: it is the reference "
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


def throughput(args) -> int:
    if args.cfg_options:
        print("error: --cfg-options is not supported with --throughput", file=sys.stderr)
        return cli.USAGE_ERROR
    tools_dir = osp.dirname(osp.abspath(__file__))
    if args.scaling and args.loader_grid:
        print("error: --scaling and --loader-grid are two different runs", file=sys.stderr)
        return cli.USAGE_ERROR
    if args.scaling:
        return scaling(args, tools_dir)
    threads = choose_threads(args.threads)
    modes = None
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.throughput:
        return throughput(args)
    if args.input is None:
        parser.error("CHECKPOINT and INPUT are required (unless --throughput)")
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
    cli.quiet_warnings()
    sys.exit(cli.run(main))
