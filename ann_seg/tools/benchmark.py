"""Benchmark configs side by side: latency, throughput, peak memory, parameters, multiply-adds.

CONFIG is a path, ann_seg::<dir>/<file>.py or an mmseg name, with the speed policy's suffixes
(docs/performance.md) so that any mix is one interleaved run: +fast (what --fast does), +bf16,
+fp16, +fp32, +cl (channels-last), +fuse, +compile, +cp (activation checkpointing), +amp
(autocast on the unmodified model: mmseg's AMP), +withcp (mmseg's with_cp). Without suffixes a
config runs in float32 as written. GMAC: 10^9 multiply-adds per image, forward (1 GMAC = 2
GFLOP). Exit status 1 if a config failed to build or run (it is still reported, as an error
row); 2 if a config file is missing or an option is wrong. See docs/benchmarks.md.

Examples:
  ann-seg benchmark ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py --repeat 3
  ann-seg benchmark mmseg::ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py \\
      mmseg::ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py+amp \\
      ann_seg::ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py+fast --repeat 3 --warmup 1
  ann-seg benchmark CONFIG --shapes 256 512 512 1024 --no-flops --plot latency.png
  ann-seg benchmark CONFIG CONFIG+fast+cp --mode train
  ann-seg benchmark CONFIG+cl CONFIG+fuse --part head --flop-rate --json heads.json
"""

import argparse
import sys

from ann_seg.benchmark import BenchmarkSettings, parse_shapes, run_benchmark
from ann_seg.benchmark.models import split_variant
from ann_seg.inference.threads import add_threads_argument, choose_threads
from ann_seg.mmseg import load_config
from ann_seg.tools import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "configs",
        nargs="+",
        metavar="CONFIG",
        help="config files, ann_seg:: or mmseg:: names, each with speed suffixes (above)",
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
        "--amp",
        action="store_true",
        help="+amp on every config without a precision suffix: autocast at the device's low "
        "precision, what mmseg's own --amp does",
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


def with_amp(config: str) -> str:
    """``--amp``: ``+amp`` where the config names no precision of its own."""
    flags = config.split("+")[1:]
    return config if {"amp", "bf16", "fp16", "fp32", "fast"} & set(flags) else config + "+amp"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = BenchmarkSettings(
            part=args.part,
            mode=args.mode,
            device=args.device,
            batch_size=args.batch_size,
            repeat=args.repeat,
            warmup=args.warmup,
            flops=not args.no_flops,
            flop_rate=args.flop_rate,
            cfg_options=args.cfg_options,
        )
        shapes = parse_shapes(args.shapes or args.shape)
        configs = [with_amp(config) for config in args.configs] if args.amp else args.configs
        paths = [split_variant(config)[0] for config in configs]
    except ValueError as error:  # bad option values: a usage error
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return cli.USAGE_ERROR
    for path in paths:  # a missing file or a mistyped --cfg-options key: refused up front
        load_config(path, args.cfg_options, work_dir="")
    choose_threads(args.threads)
    return run_benchmark(
        configs,
        settings,
        shapes,
        json_path=args.json,
        plot_path=args.plot,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    sys.exit(cli.run(main))
