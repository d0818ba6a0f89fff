"""Video inference throughput (issue #28): ``ann-seg infer clip.mp4`` against the same frames
as PNGs in a folder, images/s side by side (rounds interleaved), and peak RSS for a short and
a long clip (flat in the clip's length: frames are streamed).

The clip: H.264 (PyAV, CRF 18, yuv420p) at ``--size`` (default 512 x 1024) and ``--fps``
(default 10), moving gradients with blocks of noise; its frames, decoded, are the PNGs. Each
run is a fresh ``python -m ann_seg infer`` (``--threads``, sequential loop, ``--batch-size``),
its images/s the frames over the summary's ``total_s`` less ``load_model_s`` (decoding,
forward, writing; for the video also assembling the label video), its peak RSS the child's
``ru_maxrss``. CHECKPOINT defaults to random weights. A research harness: not shipped.

Example (from the repository root):
  python -m research.video_throughput \\
      ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py work_dirs/demo/iter_600.pth \\
      --seconds 10 60 --rounds 3 --threads 1
"""

import argparse
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

import av
import cv2
import numpy as np

from ann_seg.io.video import read_frames

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("checkpoint", nargs="?", help="default: random weights")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, first clip")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    return parser


def clip_frame(index: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """BGR uint8 (height, width, 3): moving gradients and 32x32 blocks of noise."""
    y, x = np.mgrid[:height, :width]
    frame = np.stack(
        [(x // 2 + index * 7) % 256, (y // 2 + index * 3) % 256, (x + y) // 4 % 256], -1
    ).astype(np.uint8)
    for _ in range(8):
        top, left = rng.integers(0, height - 32), rng.integers(0, width - 32)
        frame[top : top + 32, left : left + 32] = rng.integers(0, 256, (32, 32, 3))
    return frame


def write_clip(path: str, frames: int, fps: float, height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "fast"}
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(clip_frame(index, height, width, rng), "bgr24")
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_pngs(clip: str, folder: str) -> None:
    os.makedirs(folder)
    for index, frame in read_frames(clip):
        cv2.imwrite(osp.join(folder, f"{index:06d}.png"), frame)


_CHILD = """
import json, resource, sys
from ann_seg.tools import infer
code = infer.main(sys.argv[1:])
print(json.dumps({"code": code, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def run_infer(args, source: str, out_dir: str, frames: int) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)
    argv = [args.config, args.checkpoint, source, "--out-dir", out_dir, "--no-progress"]
    argv += ["--threads", str(args.threads), "--batch-size", str(args.batch_size)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=REPO)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True, env=env, cwd=REPO
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"infer failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(osp.join(out_dir, "summary.json")) as f:
        timings = json.load(f)["timings"]
    seconds = timings["total_s"] - timings["load_model_s"]
    return {
        "frames": frames,
        "seconds": round(seconds, 2),
        "wall_s": round(wall, 2),
        "images_per_s": round(frames / seconds, 3),
        "peak_rss_mib": round(result["maxrss_kb"] / 1024, 1),
    }


def random_checkpoint(config: str, path: str) -> str:
    # torch and mmseg only for this default: the harness itself needs neither
    import torch  # noqa: PLC0415

    from ann_seg.mmseg import build_segmentor  # noqa: PLC0415

    model = build_segmentor(config, device="cpu")
    torch.save(
        {"meta": {"dataset_meta": model.dataset_meta}, "state_dict": model.state_dict()}, path
    )
    return path


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    work = tempfile.mkdtemp(prefix="video_throughput_")
    try:
        if not args.checkpoint:
            args.checkpoint = random_checkpoint(args.config, osp.join(work, "random.pth"))
        height, width = args.size
        clips = []
        for seconds in args.seconds:
            frames = int(round(seconds * args.fps))
            clip = osp.join(work, f"clip_{frames}.mp4")
            write_clip(clip, frames, args.fps, height, width)
            pngs = osp.join(work, f"frames_{frames}")
            write_pngs(clip, pngs)
            clips.append((seconds, frames, clip, pngs))
        rows = []
        for index, (seconds, frames, clip, pngs) in enumerate(clips):
            rounds = args.rounds if index == 0 else 1
            for round_ in range(rounds):
                for kind, source in (("video", clip), ("png folder", pngs)):
                    result = run_infer(args, source, osp.join(work, "out"), frames)
                    result.update(input=kind, clip_s=seconds, round=round_)
                    rows.append(result)
                    print(json.dumps(result), flush=True)
        print(
            f"\n{width}x{height} @ {args.fps:g} fps, --threads {args.threads}, "
            f"--batch-size {args.batch_size}, load {os.getloadavg()[0]:.2f}"
        )
        print("| clip | frames | input | images/s (rounds) | median | peak RSS MiB |")
        print("|---|---|---|---|---|---|")
        for seconds, frames, _, _ in clips:
            for kind in ("video", "png folder"):
                mine = [r for r in rows if r["clip_s"] == seconds and r["input"] == kind]
                rates = [r["images_per_s"] for r in mine]
                rss = max(r["peak_rss_mib"] for r in mine)
                print(
                    f"| {seconds:g} s | {frames} | {kind} | {', '.join(map(str, rates))} | "
                    f"{float(np.median(rates)):.3f} | {rss} |"
                )
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
