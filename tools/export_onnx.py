"""Export a segmentor to ONNX, verified against PyTorch with onnxruntime.

Input ``image``: float32 (B, 3, H, W) RGB in 0..255; output ``logits``: float32 (B, C, H, W)
upsampled to the input size (argmax over C gives the class map). The file is written
atomically, only if onnxruntime matches PyTorch within 1e-4 (abs + rel). See docs/inference.md.
"""
import argparse
import json
import sys


def parse_args(argv=None):
    from ann_seg.apis.onnx_export import DEFAULT_OPSET

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (or mmseg::<name>.py)')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('out', help='output .onnx file')
    parser.add_argument('--shape', nargs=2, type=int, metavar=('H', 'W'),
                        help='input height and width (default: the slide crop or the data '
                        "preprocessor's size)")
    parser.add_argument('--dynamic', action='store_true',
                        help='symbolic batch, height and width')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset (default {DEFAULT_OPSET})')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ann_seg.apis.inference import ModelLoadError
    from ann_seg.apis.onnx_export import ExportCheckError, export_onnx

    try:
        report = export_onnx(args.config, args.checkpoint, args.out, shape=args.shape,
                             dynamic=args.dynamic, opset=args.opset)
    except (ExportCheckError, ModelLoadError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
