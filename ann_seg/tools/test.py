"""Test (and evaluate) a checkpoint through mmengine's Runner: the arguments and behaviour of
mmseg's tools/test.py, with ann_seg registered; the checkpoint must match the config's model
(strict loading; --non-strict to allow missing/unexpected keys).

Examples:
  ann-seg test ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py work_dirs/demo/iter_600.pth
  ann-seg test CONFIG CHECKPOINT --show-dir vis       # painted predictions in <work dir>/vis
  ann-seg test ann_seg::ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py CHECKPOINT --tta
  ann-seg test CONFIG CHECKPOINT --fast                # native low precision, folded
  ann-seg test ann_seg::ann/ann_r101-d8_4xb2-40k_cityscapes-769x769.py \\
      ann_r101-d8_769x769_40k_cityscapes --metric cityscapes   # a published model by name
  ann-seg test CONFIG CHECKPOINT --format-only submission \\
      --cfg-options test_dataloader.dataset.data_prefix.img_path=leftImg8bit/test \\
      test_dataloader.dataset.data_prefix.seg_map_path=gtFine/test   # submission.zip
"""

import argparse
import sys

from ann_seg.inference.threads import add_threads_argument, choose_threads
from ann_seg.mmseg.evaluation import METRICS_CHOICES
from ann_seg.mmseg.runner import test
from ann_seg.mmseg.speed import add_speed_arguments, default_device, speed_policy
from ann_seg.tools import cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="config file, ann_seg::<dir>/<file>.py or mmseg::...")
    parser.add_argument(
        "checkpoint",
        help="checkpoint file, mmseg model-zoo URL or published model name (ann-seg models)",
    )
    parser.add_argument("--work-dir", help="metrics and logs (default: work_dirs/<config name>)")
    parser.add_argument("--out", help="folder for the predicted label maps")
    parser.add_argument(
        "--format-only",
        metavar="OUT",
        help="no evaluation: write the test set's predictions as the benchmark server wants "
        "them into OUT (Cityscapes: <city>_<seq>_<frame>_leftImg8bit.png with label ids; "
        "ADE20K: 1-based PNGs) and OUT.zip to upload; a re-run skips images already written",
    )
    parser.add_argument(
        "--metric",
        choices=METRICS_CHOICES,
        default="iou",
        help="iou (default): mmseg's aAcc/mIoU/mAcc; cityscapes: also the official Cityscapes "
        "evaluation (cityscapesScripts, on label-id files in a temporary folder) of the same "
        "predictions. Either way the per-class IoU/accuracy table (per_class.md/.csv) and the "
        "confusion matrix (confusion_matrix.csv/.png) go beside the metrics in the run's folder",
    )
    parser.add_argument(
        "--show-dir",
        help="folder for painted predictions (relative: under the work dir); every image, or "
        "every --show-interval-th",
    )
    parser.add_argument(
        "--show-interval", type=int, default=1, help="paint every N-th image (default 1)"
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation (multi-scale + flip) as the config's tta_pipeline",
    )
    parser.add_argument(
        "--non-strict",
        action="store_true",
        help="load the checkpoint even if keys are missing or unexpected (mmseg's behaviour)",
    )
    add_speed_arguments(parser, "test")
    add_threads_argument(parser)
    cli.add_cfg_options_argument(parser)
    cli.add_runner_arguments(parser, "dist-test")
    cli.add_debug_argument(parser)
    return cli.parse_runner_args(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    choose_threads(args.threads)
    test(
        args.config,
        args.checkpoint,
        work_dir=args.work_dir,
        out=args.out,
        show_dir=args.show_dir,
        tta=args.tta,
        cfg_options=args.cfg_options,
        launcher=args.launcher,
        strict=not args.non_strict,
        show_interval=args.show_interval,
        verbose=args.verbose,
        speed=speed_policy(args, "test", default_device()),
        metric=args.metric,
        format_only=args.format_only,
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
