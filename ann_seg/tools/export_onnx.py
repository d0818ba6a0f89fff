"""Export a segmentor to ONNX, verified against PyTorch with onnxruntime.

Input "image": float32 (B, 3, H, W) RGB in 0..255; output "logits": float32 (B, C, H, W)
upsampled to the input size (argmax over C gives the class map). The file is written
atomically, only if onnxruntime matches PyTorch within 1e-4 (abs + rel); otherwise nothing is
written and the exit status is 1. See docs/inference.md.

Examples:
  ann-seg export-onnx ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \\
      work_dirs/demo/iter_600.pth demo.onnx
  ann-seg export-onnx CONFIG CHECKPOINT model.onnx --shape 512 1024 --dynamic
  # then the exported model on a backend against float32 PyTorch, image by image (exit 1
  # below --min-agreement); ann-seg infer --backend onnxruntime|openvino runs it
  ann-seg export-onnx CONFIG CHECKPOINT model.onnx --dynamic --check-images samples/ \\
      --check-backend openvino
"""

import argparse
import json
import sys

from ann_seg.inference.backends import BACKENDS
from ann_seg.inference.onnx_export import (
    DEFAULT_OPSET,
    ExportCheckError,
    check_images,
    export_onnx,
)
from ann_seg.inference.threads import add_threads_argument, choose_threads
from ann_seg.tools import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="config file, ann_seg::<dir>/<file>.py or mmseg::...")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("out", help="output .onnx file")
    parser.add_argument(
        "--shape",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="input height and width (default: the slide crop or the data preprocessor's size)",
    )
    parser.add_argument("--dynamic", action="store_true", help="symbolic batch, height and width")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--check-images",
        metavar="DIR",
        help="after the export, run it on the images in DIR with --check-backend and compare "
        "with the float32 PyTorch model: pixel agreement and logits max error per image",
    )
    parser.add_argument(
        "--check-backend", choices=BACKENDS, default="onnxruntime", help="(default onnxruntime)"
    )
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.999,
        help="--check-images fails (exit 1) when an image agrees less (default 0.999)",
    )
    add_threads_argument(parser)
    cli.add_cfg_options_argument(parser)
    cli.add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = export_onnx(
            args.config,
            args.checkpoint,
            args.out,
            shape=args.shape,
            dynamic=args.dynamic,
            opset=args.opset,
            cfg_options=args.cfg_options,
        )
        if args.check_images:
            choose_threads(args.threads)  # the PyTorch side; the backend gets args.threads
            rows = check_images(
                args.out,
                args.config,
                args.checkpoint,
                args.check_images,
                args.check_backend,
                args.threads,
                args.cfg_options,
            )
            report["parity"] = {"backend": args.check_backend, "images": rows}
            worst = min(row["agreement"] for row in rows)
            if worst < args.min_agreement:
                print(json.dumps(report, indent=2))
                print(
                    f"error: {args.check_backend} agrees with PyTorch on {worst:.4%} of an "
                    f"image's pixels, below --min-agreement {args.min_agreement}",
                    file=sys.stderr,
                )
                return 1
    except ExportCheckError as error:  # onnxruntime disagrees: nothing written
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # a bad --shape, a BackendError (known errors go to cli.run)
        if args.debug or isinstance(error, cli.KNOWN_ERRORS):
            raise
        print(f"error: {error}", file=sys.stderr)
        return cli.USAGE_ERROR
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
