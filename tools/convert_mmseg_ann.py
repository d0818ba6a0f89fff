"""Convert an mmseg ANN checkpoint (ANNHead) into an ann_seg (ANNSegHead) checkpoint."""
import argparse
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('src', help='mmseg ANN checkpoint (.pth)')
    parser.add_argument('dst', help='output ann_seg checkpoint (written atomically)')
    parser.add_argument('--config', help='ann_seg config to check the result against, e.g. '
                        'configs/ann/ann_r101-d8_4xb2-40k_cityscapes-769x769.py')
    args = parser.parse_args()
    from ann_seg.convert import ConversionError, convert_checkpoint
    from ann_seg.utils.checkpoint import CorruptCheckpointError, UnsafeCheckpointError
    try:
        n_in, n_out = convert_checkpoint(args.src, args.dst, args.config)
    except (ConversionError, CorruptCheckpointError, UnsafeCheckpointError,
            FileNotFoundError) as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)
    checked = f', checked against {args.config}' if args.config else ''
    print(f'converted {args.src} -> {args.dst}: {n_in} tensors in, {n_out} out{checked}')


if __name__ == '__main__':
    main()
