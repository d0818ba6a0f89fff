"""Segment an image, a video, a folder (optionally recursive) or a list of paths with a
checkpoint.

Writes label maps (palette PNG, exact class ids), optional overlays and logits mirroring the input
tree under --out-dir, and summary.json. A re-run skips the images the same model (config,
checkpoint content, --slide, speed options) segmented from the same file; another model's are
segmented again (--on-model-change). One run per --out-dir at a time (its infer.lock).

Exit status: 0 all done; 1 some images failed (listed on stderr: unreadable, non-finite logits)
or are still pending (ranks that did not all finish), or the disk filled up (one line; the
journal is intact: free space and re-run to finish); 2 nothing could run (bad input, config,
checkpoint or --out-dir, the --out-dir in use by another run); 130 Ctrl-C, 143 SIGTERM
(summary.json rebuilt from the journal; a re-run finishes). See docs/inference.md.

Examples:
  ann-seg infer ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \\
      work_dirs/demo/iter_600.pth data/synthetic_long_range/leftImg8bit/val --recursive --fuse
  ann-seg infer CONFIG CHECKPOINT photos/ --recursive --overlay --out-dir outputs/photos
  ann-seg infer CONFIG CHECKPOINT "photos/**/*.jpg"   # a glob (quoted): names relative to photos/
  ann-seg infer CONFIG CHECKPOINT big.png --slide --threads 1   # sliding window
  ann-seg infer CONFIG CHECKPOINT photos/ --workers 2 --batch-size 4   # pipelined loop

Videos (alone, in folders with images, in list files; frame by frame, resumable per frame):
  ann-seg infer CONFIG CHECKPOINT clip.mp4 --overlay --batch-size 4
      # labels/clip.mp4.mkv (lossless class-id colours), overlays/clip.mp4.mp4 (H.264)
  ann-seg infer CONFIG CHECKPOINT footage/ --recursive --frames   # also keep per-frame PNGs

Exported models (ann-seg export-onnx; no config, mmcv or torch needed by the model: its
metadata holds classes, palette, test resize and window):
  ann-seg infer --backend onnxruntime model.onnx photos/ --recursive --out-dir outputs/onnx
  ann-seg infer --backend openvino model.onnx big.tif --slide 512x1024 --fast   # bf16

Distributed (every rank segments a shard of the sorted input list with its own GPU, or
cores // ranks-per-node CPU threads, and journal; rank 0 merges summary.json at the end;
a re-run with any number of ranks skips what is done):
  ann-seg dist-infer CONFIG CHECKPOINT INPUT NPROC [ann-seg infer args]   # torchrun
  srun -n 8 python -m ann_seg infer CONFIG CHECKPOINT INPUT --launcher slurm
  ann-seg infer --merge-only --out-dir DIR   # summary.json from whatever the ranks wrote
"""

import argparse
import sys

from ann_seg.inference import (
    DEFAULT_OUT_DIR,
    DistributedOptions,
    LoaderOptions,
    OutputOptions,
    run_inference,
)
from ann_seg.inference.backends import BACKENDS, run_exported
from ann_seg.inference.distributed import (
    DEFAULT_TIMEOUT_S,
    LAUNCHERS,
    incomplete_note,
    merge_journals,
    rank_info,
)
from ann_seg.inference.folder import MODEL_CHANGE_ACTIONS
from ann_seg.inference.inputs import DEFAULT_EXTENSIONS
from ann_seg.inference.threads import add_threads_argument, choose_rank_threads
from ann_seg.io import DEFAULT_MAX_PIXELS
from ann_seg.mmseg.config import UserOptions, slide_options
from ann_seg.mmseg.speed import add_speed_arguments, default_device, speed_policy
from ann_seg.tools import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "config",
        nargs="?",
        help="config file, ann_seg::<dir>/<file>.py or mmseg::... (with --backend: MODEL.onnx)",
    )
    parser.add_argument(
        "checkpoint",
        nargs="?",
        help="checkpoint file, mmseg model-zoo URL or published model name (ann-seg models); "
        "with --backend: INPUT",
    )
    parser.add_argument(
        "input",
        nargs="?",
        help="image, video (.mp4, .mkv, .avi, .mov...: segmented frame by frame), folder "
        "(images and videos), list file (.txt/.lst/.list, one path per line, relative to "
        'the list file), or quoted glob pattern ("photos/*.jpg", "data/**/*.png")',
    )
    parser.add_argument(
        "--backend",
        choices=("pytorch", *BACKENDS),
        default="pytorch",
        help="pytorch (default: CONFIG CHECKPOINT INPUT) or an exported model on the CPU: "
        "--backend onnxruntime|openvino MODEL.onnx INPUT (ann-seg export-onnx writes it)",
    )
    parser.add_argument(
        "--out-dir", default=DEFAULT_OUT_DIR, help=f"output folder (default {DEFAULT_OUT_DIR})"
    )
    parser.add_argument("--overlay", action="store_true", help="also write colour overlays")
    parser.add_argument(
        "--opacity",
        type=float,
        default=0.5,
        help="overlay opacity of the label colours, in (0, 1] (default 0.5)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per forward (consecutive images of equal size; default 1); on a 2-core "
        "CPU, 8 segmented small images 2.45x faster than 1 (docs/performance.md)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader processes that read and preprocess while the model runs and threads "
        "write (the pipelined loop; same labels); default 0: the sequential loop, faster "
        "where the model runs on the same few CPU cores",
    )
    parser.add_argument(
        "--device",
        help="torch device (default cuda:0 if available, else cpu; under a launcher "
        "cuda:LOCAL_RANK, and 'cuda' means that one)",
    )
    add_threads_argument(parser)
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument(
        "--ext",
        nargs="+",
        metavar="EXT",
        help="image and video extensions to take from folders (default "
        f"{' '.join(e.lstrip('.') for e in DEFAULT_EXTENSIONS)})",
    )
    parser.add_argument(
        "--frames",
        action="store_true",
        help="videos: keep the per-frame label PNGs (labels/<video>.frames/<frame>.png) beside "
        "the label video; by default they are deleted once the video is assembled",
    )
    parser.add_argument(
        "--save-logits",
        nargs="?",
        const="npy",
        choices=["npy", "npz"],
        help="also write float16 logits (C, H, W): .npy (default when given) or .npz",
    )
    parser.add_argument(
        "--force", action="store_true", help="segment again images whose outputs already exist"
    )
    parser.add_argument(
        "--on-model-change",
        choices=MODEL_CHANGE_ACTIONS,
        default="redo",
        help="outputs in --out-dir made by another model (another checkpoint, config, --slide "
        "or speed option: the journal's fingerprint): redo (default) segments them again, "
        "refuse exits 2 without touching them",
    )
    parser.add_argument(
        "--max-pixels",
        type=float,
        default=DEFAULT_MAX_PIXELS,
        help=f"skip (and report) images with more pixels (default {DEFAULT_MAX_PIXELS:.0e})",
    )
    cli.add_cfg_options_argument(parser)
    parser.add_argument(
        "--slide",
        nargs="*",
        metavar="CROP",
        help="sliding-window inference: --slide [CROP [STRIDE]], each H or HxW (default: the "
        "config's crop size, stride 2/3 of the crop); for images larger than the training crop",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="with --slide: segment images at this factor of their size (default 1: native "
        "resolution, the config's test resize is not applied; labels at the input's size)",
    )
    add_speed_arguments(parser, "infer")
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="none",
        help="one rank of a distributed run: pytorch (torchrun: ann-seg dist-infer) or slurm "
        "(srun: SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID); default none: one process",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="seconds rank 0 waits for the other ranks to join and to finish before it merges "
        f"what exists (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--merge-only",
        action="store_true",
        help="segment nothing: write --out-dir's summary.json from all its journals (after a "
        "crash); CONFIG, CHECKPOINT and INPUT are not needed",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_debug_argument(parser)
    return parser


def report(summary: dict, out_dir: str, threads: str) -> int:
    """Print the counts, the failures and what is missing; the exit status."""
    counts = summary["counts"]
    videos = counts.get("videos")
    what = (
        f"{counts['processed']} segmented, {counts['skipped']} already done, "
        f"{counts['failed']} failed"
    )
    if videos:
        what = (
            f"images: {what}; videos: {videos['processed']} segmented "
            f"({videos['frames_segmented']} frames), {videos['skipped']} already done, "
            f"{videos['failed']} failed"
        )
    print(f"{what} ({threads}); outputs and summary.json in {out_dir}")
    note = incomplete_note(summary)
    if note:
        print(f"incomplete: {note}", file=sys.stderr)
    if summary["failures"]:
        total = f"{counts['images']} images"
        if videos:
            total = f"{counts['images']} images and {videos['videos']} videos"
        print(f"{len(summary['failures'])} of {total} failed:", file=sys.stderr)
        for failure in summary["failures"]:
            print(f"  {failure['name']}: {failure['reason']}", file=sys.stderr)
    return 1 if summary["failures"] or note else 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.merge_only:
        return report(merge_journals(args.out_dir), args.out_dir, "merged")
    if args.backend != "pytorch" and args.checkpoint is None:
        parser.error(f"--backend {args.backend} needs MODEL.onnx and INPUT")
    if args.backend == "pytorch" and args.input is None:
        parser.error("CONFIG, CHECKPOINT and INPUT are required (unless --merge-only)")
    info = rank_info(args.launcher)
    threads = choose_rank_threads(args.threads, info)
    cfg_options = args.cfg_options
    if args.slide is not None:
        cfg_options = UserOptions({**(cfg_options or {}), **slide_options(args.config, args.slide)})
    outputs = OutputOptions(
        overlay=args.overlay,
        opacity=args.opacity,
        save_logits=args.save_logits,
        force=args.force,
        on_model_change=args.on_model_change,
        keep_frames=args.frames,
    )
    loader = LoaderOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        recursive=args.recursive,
        extensions=args.ext,
        max_pixels=int(args.max_pixels),
        scale=args.scale,
    )
    distributed = DistributedOptions(launcher=args.launcher, timeout=args.dist_timeout)
    if args.backend != "pytorch":
        summary = _run_exported(parser, args, outputs, loader, distributed, threads)
        return _report_rank(summary, info, args.out_dir, threads)
    summary = run_inference(
        args.config,
        args.checkpoint,
        args.input,
        args.out_dir,
        outputs=outputs,
        loader=loader,
        speed=speed_policy(args, "infer", args.device or default_device()),
        distributed=distributed,
        device=args.device,
        cfg_options=cfg_options,
        progress=not args.no_progress,
    )
    return _report_rank(summary, info, args.out_dir, threads)


def _run_exported(parser, args, outputs, loader, distributed, threads: int) -> dict:
    """``--backend onnxruntime|openvino MODEL INPUT``: the exported model on the CPU."""
    if args.input is not None:
        parser.error(f"--backend {args.backend} takes MODEL.onnx and INPUT, not a config")
    torch_only = [
        flag
        for flag, used in (
            ("--device", args.device not in (None, "cpu")),
            ("--cfg-options", bool(args.cfg_options)),
            ("--compile", getattr(args, "compile", False)),
            ("--channels-last", getattr(args, "channels_last", None)),
        )
        if used
    ]
    if torch_only:
        parser.error(f"{', '.join(torch_only)}: PyTorch options, not for --backend {args.backend}")
    precision = args.precision or ("auto" if args.fast else "fp32")
    if precision == "auto":  # the low precision the CPU computes natively, where it is exact
        precision = "bf16" if args.backend == "openvino" else "fp32"
    slide = None
    if args.slide is not None:
        slide = True
        if args.slide:
            window = slide_options(None, args.slide)["+model.test_cfg"]
            slide = (window["crop_size"], window["stride"])
    return run_exported(
        args.backend,
        args.config,
        args.checkpoint,
        args.out_dir,
        outputs=outputs,
        loader=loader,
        distributed=distributed,
        threads=threads,
        precision=precision,
        slide=slide,
        progress=not args.no_progress,
    )


def _report_rank(summary: dict, info, out_dir: str, threads: int) -> int:
    if info.rank != 0:  # rank 0 reports the merged run; exiting 0 keeps torchrun waiting
        own = summary["rank"]
        print(
            f"[rank {info.rank}/{info.world_size}] {own['processed']} segmented, "
            f"{own['skipped']} already done, {own['failed']} failed of its {own['images']} "
            f"({threads} thread(s)); rank 0 writes summary.json"
        )
        return 0
    return report(summary, out_dir, f"{threads} thread(s)")


if __name__ == "__main__":
    sys.exit(cli.run(main))
