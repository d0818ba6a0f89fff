"""Benchmark configs side by side: latency, throughput, peak memory, parameters, multiply-adds.

CONFIG is a path, ann_seg::<dir>/<file>.py or an mmseg name
(mmseg::ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py); a +fuse / +cl / +compile suffix
measures it folded for inference / channels-last / under torch.compile; +fast / +cp the fast
training mode / its activation checkpointing, +withcp mmseg's own with_cp (for --mode train).
Complexity is given in GMAC (10^9 multiply-adds per image, forward; 1 GMAC = 2 GFLOP). All
configs at a size are timed interleaved. Exit status 1 if a config failed to build or run (it
is still reported, as an error row); 2 if a config file is missing or an option is wrong. See
docs/benchmark.md.

Examples:
  tools/benchmark.py configs/demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py --repeat 3
  tools/benchmark.py mmseg::ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py \\
      configs/ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py+fuse+cl \\
      --part head --shape 512 1024 --repeat 5 --warmup 1 --flop-rate --json heads.json
  tools/benchmark.py CONFIG --shapes 256 512 512 1024 --no-flops --plot latency.png
  tools/benchmark.py mmseg::ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py \\
      ann_seg::ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py+fast+cp --mode train
"""

import argparse
import sys

from ann_seg import cli
from ann_seg.benchmark import BenchmarkSettings, parse_shapes, run_benchmark
from ann_seg.benchmark.models import split_variant
from ann_seg.inference.threads import add_threads_argument, choose_threads
from ann_seg.mmseg import load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "configs",
        nargs="+",
        metavar="CONFIG",
        help="config files, ann_seg:: or mmseg::<dir>/<name>.py names; append +fuse (exact "
        "inference folding), +cl (channels-last) and/or +compile for variants; +fast (fast "
        "training mode), +cp (its activation checkpointing), +withcp (mmseg's with_cp)",
    )
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument(
        "--shape",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="input size (default: each config's crop size)",
    )
    shape.add_argument(
        "--shapes",
        nargs="+",
        type=int,
        metavar="H W",
        help="several input sizes H1 W1 H2 W2 ... (e.g. for --plot)",
    )
    parser.add_argument(
        "--part",
        choices=["model", "backbone", "head"],
        default="model",
        help="whole EncoderDecoder, backbone alone, or decode head alone on "
        "synthetic backbone features (default model)",
    )
    parser.add_argument(
        "--mode",
        choices=["infer", "train"],
        default="infer",
        help="infer: eval + no_grad forward; train: forward + backward (default infer)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per step (default 1)")
    parser.add_argument("--repeat", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    add_threads_argument(parser)
    parser.add_argument(
        "--amp", action="store_true", help="autocast: bfloat16 on the CPU, float16 on CUDA"
    )
    parser.add_argument(
        "--no-flops",
        action="store_true",
        help="skip MAC counting (it traces one more forward per config)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="latency and memory against input size (use with --shapes)",
    )
    cli.add_cfg_options_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--flop-rate",
        action="store_true",
        help="report achieved GFLOP/s (2 x MACs / latency) against this machine's float32 "
        "3x3 conv rate, timed in the same interleaved rounds",
    )
    cli.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = BenchmarkSettings(
            part=args.part,
            mode=args.mode,
            device=args.device,
            amp=args.amp,
            batch_size=args.batch_size,
            repeat=args.repeat,
            warmup=args.warmup,
            flops=not args.no_flops,
            flop_rate=args.flop_rate,
            cfg_options=args.cfg_options,
        )
        shapes = parse_shapes(args.shapes or args.shape)
        paths = [split_variant(config)[0] for config in args.configs]
    except ValueError as error:  # bad option values: a usage error
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return cli.USAGE_ERROR
    for path in paths:  # a missing file or a mistyped --cfg-options key: refused up front
        load_config(path, args.cfg_options, work_dir="")
    choose_threads(args.threads)
    return run_benchmark(
        args.configs,
        settings,
        shapes,
        json_path=args.json,
        plot_path=args.plot,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    cli.quiet_warnings()
    sys.exit(cli.run(main))
