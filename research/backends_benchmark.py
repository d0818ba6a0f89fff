"""Exported backends against the PyTorch paths, one interleaved run: onnxruntime fp32,
OpenVINO fp32 (and bf16 with --openvino-bf16), ann_seg's PyTorch path with the speed policy's
``--fast`` (``SpeedPolicy.fast('infer')`` + ``apply_inference_speed``) and mmseg fp32
(``mmseg.apis.inference_model``). ms/image (median over rounds, warm-up excluded), pixel
agreement and logits max error (over max |logit|) against mmseg fp32 per mode. Each timed call
is one whole image through the mode's own preprocessing, model and postprocessing (labels and
logits at the image size).

Random weights (no trained checkpoint is reachable here): convolutions N(0, 2/fan_in), BN
weights N(0, --bn-std), biases N(0, 0.1), saved to a temporary checkpoint and exported with
``ann-seg export-onnx --dynamic``'s code path. PyTorch's default init labels every pixel with
one class (agreement would be trivially 100 %); at --bn-std 0.55 the R-101 model labels the
images (colour blobs plus noise) with a few classes, one dominant: the run prints the share.
Speed is that of trained weights; agreement depends on the margins of these weights.

Example (from the repository root; the test resize set to the image size, so the network
runs at 512 x 1024 as the folder benchmark's --speed):
  python -m research.backends_benchmark ann_seg::ann/ann_r101-d8_4xb2-40k_cityscapes-512x1024.py \\
      --size 512 1024 --images 2 --rounds 3 --threads 2 --openvino-bf16 \\
      --cfg-options "test_pipeline.1.scale=(1024,512)"
"""

import argparse
import json
import os.path as osp
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
from mmseg.apis import inference_model

from ann_seg.inference.backends import load_backend
from ann_seg.inference.onnx_export import export_onnx
from ann_seg.io import markdown_table
from ann_seg.mmseg import build_segmentor
from ann_seg.mmseg.speed import SpeedPolicy, apply_inference_speed
from ann_seg.tools import cli

DEFAULT_CONFIG = "ann_seg::ann/ann_r101-d8_4xb2-40k_cityscapes-512x1024.py"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    parser.add_argument("--size", nargs=2, type=int, default=(512, 1024), metavar=("H", "W"))
    parser.add_argument("--images", type=int, default=2, help="images per round (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bn-std", type=float, default=0.55, help="see above (default 0.55)")
    parser.add_argument("--openvino-bf16", action="store_true", help="also OpenVINO in bf16")
    parser.add_argument("--json", help="write the results here")
    cli.add_cfg_options_argument(parser)
    return parser


def random_checkpoint(config, cfg_options, path: str, bn_std: float) -> str:
    model = build_segmentor(config, cfg_options=cfg_options)  # nothing downloaded
    generator = torch.Generator().manual_seed(0)
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if not tensor.dtype.is_floating_point or "running" in name:
                continue
            if tensor.ndim > 1:
                std = (2.0 / tensor[0].numel()) ** 0.5
            else:
                std = bn_std if name.endswith("weight") else 0.1
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)
    torch.save({"state_dict": state, "meta": {}}, path)
    return path


def blob_images(count: int, height: int, width: int, seed: int = 0):
    """Colour blobs (an eighth of the size, upsampled) plus noise, BGR uint8."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        blobs = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        noise = rng.integers(-20, 21, (height, width, 3))
        images.append(np.clip(blobs.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return images


def backend_mode(predictor):
    def run(image):
        prediction = predictor.predict([image], want_logits=True)[0]  # computed either way
        return prediction.label, prediction.logits

    return run


def torch_mode(model):
    def run(image):
        with torch.no_grad():
            result = inference_model(model, image)
        return result.pred_sem_seg.data[0].numpy(), result.seg_logits.data.float().numpy()

    return run


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    options = {"model.pretrained": None, **(args.cfg_options or {})}
    height, width = args.size
    images = blob_images(args.images, height, width)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = random_checkpoint(
            args.config, options, osp.join(tmp, "random.pth"), args.bn_std
        )
        onnx_file = osp.join(tmp, "model.onnx")
        start = time.perf_counter()
        export = export_onnx(
            args.config, checkpoint, onnx_file, shape=args.size, dynamic=True, cfg_options=options
        )
        export_s = time.perf_counter() - start
        fp32 = build_segmentor(args.config, cfg_options=options, checkpoint=checkpoint)
        fast = build_segmentor(args.config, cfg_options=options, checkpoint=checkpoint)
        speed = SpeedPolicy.fast("infer").resolve("cpu")
        apply_inference_speed(fast, speed)
        backends = {
            "onnxruntime fp32": load_backend("onnxruntime", onnx_file, args.threads),
            "openvino fp32": load_backend("openvino", onnx_file, args.threads),
        }
        if args.openvino_bf16:
            backends["openvino bf16"] = load_backend("openvino", onnx_file, args.threads, "bf16")

        modes = {name: backend_mode(p) for name, p in backends.items()}
        modes[f"ann_seg --fast ({speed.name})"] = torch_mode(fast)
        modes["mmseg fp32 (inference_model)"] = torch_mode(fp32)
        reference = [torch_mode(fp32)(image) for image in images]
        times = {name: [] for name in modes}
        agreement = {name: [] for name in modes}
        logits_error = {name: [] for name in modes}
        for round_index in range(args.rounds + 1):  # round 0: warm-up
            for name, run in modes.items():
                start = time.perf_counter()
                outputs = [run(image) for image in images]
                elapsed = (time.perf_counter() - start) / len(images)
                if round_index:
                    times[name].append(elapsed * 1000)
                if round_index == 1:
                    for (label, logits), (ref_label, ref_logits) in zip(outputs, reference):
                        agreement[name].append(float((label == ref_label).mean()))
                        error = np.abs(logits - ref_logits).max() / np.abs(ref_logits).max()
                        logits_error[name].append(float(error))
            print(f"round {round_index} done", file=sys.stderr)
    base = statistics.median(times["mmseg fp32 (inference_model)"])
    rows = []
    for name in modes:
        ms = statistics.median(times[name])
        rows.append(
            [
                name,
                f"{ms:.0f}",
                f"{min(times[name]):.0f}-{max(times[name]):.0f}",
                f"{base / ms:.2f}x",
                f"{100 * min(agreement[name]):.3f}",
                f"{max(logits_error[name]):.1e}",
            ]
        )
    header = [
        "mode",
        "ms/image (median)",
        "range",
        "vs mmseg fp32",
        "min pixel agreement %",
        "logits max err (rel. to max logit)",
    ]
    counts = [np.bincount(label.ravel()) for label, _ in reference]
    shares = [f"{(c > 0).sum()} classes, largest {c.max() / c.sum():.1%}" for c in counts]
    print(markdown_table(header, rows))
    print(
        f"{args.config} (random weights), {height} x {width} images, {args.images} per round, "
        f"{args.rounds} timed rounds after a warm-up, {args.threads} threads; export "
        f"{export_s:.0f} s, verification {[c['max_abs_diff'] for c in export['checks']]}; "
        f"mmseg fp32 labels: {'; '.join(shares)}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "times_ms": times,
                    "agreement": agreement,
                    "logits_max_rel_error": logits_error,
                    "export_s": export_s,
                    "speed": speed.record(),
                },
                f,
                indent=2,
                default=str,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
