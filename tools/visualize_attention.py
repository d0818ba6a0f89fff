"""Heat maps of where AFNB and APNB attend for chosen query pixels of an image.

Each block's softmax weights over its pyramid anchors are spread over the anchors' bin regions
and drawn over the image: one row per point, one column per block (--levels adds one per pyramid
level). See docs/inference.md.
"""
import argparse
import sys


def parse_point(text: str):
    try:
        x, y = (int(round(float(v))) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected X,Y (pixel coordinates), got {text!r}') \
            from None
    return x, y


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file (or mmseg::<name>.py)')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('image', help='image file')
    parser.add_argument('--points', nargs='+', type=parse_point, required=True, metavar='X,Y',
                        help='query pixels in image coordinates (x = column, y = row)')
    parser.add_argument('--out', default='attention.png', help='output PNG (attention.png)')
    parser.add_argument('--levels', action='store_true', help='add one column per pyramid level')
    parser.add_argument('--device', help='torch device (default cuda:0 if available, else cpu)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ann_seg.apis.attention_maps import visualize_attention
    from ann_seg.apis.inference import ImageError, ModelLoadError

    try:
        blocks = visualize_attention(args.config, args.checkpoint, args.image, args.points,
                                     args.out, device=args.device, levels=args.levels)
    except (ImageError, ModelLoadError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    names = ', '.join(block.name for block in blocks)
    print(f'attention of {names} for {len(args.points)} point(s) -> {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
