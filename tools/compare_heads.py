"""Train FCN (local baseline), NL, CGNL, APNB-only and ANN heads under one budget on the
built-in long-range set; print a table of mIoU (mean ± std over seeds) and plot the curves."""
import argparse


def main():
    from ann_seg.apis.compare import HEADS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--heads', nargs='+', default=list(HEADS), choices=list(HEADS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--max-iters', type=int, default=400)
    parser.add_argument('--val-interval', type=int, default=100)
    parser.add_argument('--data-root', default='data/synthetic_long_range_64x128')
    parser.add_argument('--work-dir', default='work_dirs/compare_heads')
    parser.add_argument('--plot', help='PNG path (default: WORK_DIR/miou_curves.png)')
    args = parser.parse_args()
    from ann_seg.apis.compare import compare_heads, markdown_table
    result = compare_heads(args.heads, args.seeds, args.max_iters, args.val_interval,
                           args.data_root, args.work_dir, plot=args.plot)
    print(markdown_table(result['rows']))


if __name__ == '__main__':
    main()
