"""Inference modes side by side on real images (``ann-seg benchmark-inference``).

Every mode (``fp32``, the reference, or a chain of the speed policy's suffixes applied as
``ann-seg infer`` applies them: ``fast``, ``fuse``, ``bf16``, ``amp``, ``fuse+bf16+cl``, ...)
segments the same images through mmseg's ``inference_model`` with its own copy of the same
weights, timed interleaved (the order rotated per image) after warm-up on the first image.
Reported per mode: median latency, speed-up over ``fp32``, pixel agreement of the label maps
with ``fp32`` (all pixels and the worst image) and the relative L2 distance of the logits.
"""

import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from mmseg.apis import inference_model

from ann_seg.inference import InferenceInputError, collect_inputs
from ann_seg.io import ImageError, Progress, markdown_table, read_image
from ann_seg.layers.compat import native_low_precision_dtype
from ann_seg.mmseg import build_segmentor
from ann_seg.mmseg.config import ConfigError
from ann_seg.mmseg.speed import ResolvedSpeed, apply_inference_speed, split_suffixes

from .measure import latency_stats, synchronize

REFERENCE_MODE = "fp32"
RANDOM_WEIGHTS = "random"


def mode_speed(mode: str, device: str) -> ResolvedSpeed:
    """A mode name (speed suffixes joined by ``+``) resolved for ``device``."""
    try:
        _, policy, _ = split_suffixes(f"mode+{mode}")
    except ConfigError as error:
        raise ValueError(f"inference mode {mode!r}: {error}") from None
    return policy.resolve(device)


def check_modes(modes: Sequence[str], device: str = "cpu") -> List[str]:
    """Valid, unique mode names with ``fp32`` (the reference) first."""
    for mode in modes:
        mode_speed(mode, device)
    rest = [m for m in dict.fromkeys(modes) if m != REFERENCE_MODE]
    return [REFERENCE_MODE, *rest]


def load_model(
    config, checkpoint: str, device: str = "cpu", cfg_options: Optional[dict] = None, seed: int = 0
):
    """``build_segmentor`` with ``checkpoint``; ``checkpoint='random'``: the config's model
    with random weights (PyTorch's default init, seeded, so every mode gets the same ones), for
    timing and numerical checks of architectures without a trained checkpoint."""
    if checkpoint == RANDOM_WEIGHTS:
        torch.manual_seed(seed)
        checkpoint = None
    return build_segmentor(config, device=device, cfg_options=cfg_options, checkpoint=checkpoint)


def _read_images(input_path: str, max_images: Optional[int], recursive: bool):
    images, failures = [], []
    for task in collect_inputs(input_path, recursive):
        if max_images is not None and len(images) >= max_images:
            break
        try:
            images.append((task.name, read_image(task.path)[0]))
        except ImageError as error:
            failures.append({"name": task.name, "reason": str(error)})
    return images, failures


def _predict(model, image: np.ndarray, speed: ResolvedSpeed):
    with torch.no_grad(), speed.context():
        result = inference_model(model, image)
    return (result.pred_sem_seg.data[0].cpu().numpy(), result.seg_logits.data.float().cpu().numpy())


def compare_inference_modes(
    config,
    checkpoint: str,
    input_path: str,
    modes: Sequence[str] = ("fp32", "fast"),
    device: str = "cpu",
    max_images: Optional[int] = None,
    warmup: int = 1,
    cfg_options: Optional[dict] = None,
    recursive: bool = False,
    progress: bool = True,
) -> Dict[str, Any]:
    """Segment the images of ``input_path`` in every mode; returns ``rows`` (one per mode)
    and ``meta``. Unreadable images are reported in ``meta['failures']`` and skipped."""

    modes = check_modes(modes, device)
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    images, failures = _read_images(input_path, max_images, recursive)
    if not images:
        raise InferenceInputError(f"no readable image in {input_path}")
    models = {}
    for mode in modes:
        speed = mode_speed(mode, device)
        model = load_model(config, checkpoint, device, cfg_options)
        models[mode] = (apply_inference_speed(model, speed), speed)

    for _ in range(warmup):
        for model, speed in models.values():
            _predict(model, images[0][1], speed)
    times: Dict[str, List[float]] = {m: [] for m in modes}
    stats = {m: dict(equal=0, pixels=0, worst=1.0, logit_rel=0.0) for m in modes}
    with Progress(len(images) * len(modes), enabled=progress) as bar:
        for index, (_, image) in enumerate(images):
            shift = index % len(modes)
            outputs = {}
            for mode in modes[shift:] + modes[:shift]:
                model, speed = models[mode]
                synchronize(device)
                start = time.perf_counter()
                outputs[mode] = _predict(model, image, speed)
                synchronize(device)
                times[mode].append(time.perf_counter() - start)
                bar.update()
            ref_label, ref_logits = outputs[REFERENCE_MODE]
            ref_norm = float(np.linalg.norm(ref_logits)) or 1.0
            for mode, (label, logits) in outputs.items():
                equal = int((label == ref_label).sum())
                logit_rel = float(np.linalg.norm(logits - ref_logits)) / ref_norm
                s = stats[mode]
                s["equal"] += equal
                s["pixels"] += label.size
                s["worst"] = min(s["worst"], equal / label.size)
                s["logit_rel"] = max(s["logit_rel"], logit_rel)

    ref_median = statistics.median(times[REFERENCE_MODE])
    rows = []
    for mode in modes:
        median = statistics.median(times[mode])
        s = stats[mode]
        rows.append(
            dict(
                mode=mode,
                speed=models[mode][1].record(),
                latency_ms=latency_stats(times[mode]),
                img_s=1.0 / median,
                speedup=ref_median / median,
                pixel_agreement=s["equal"] / s["pixels"],
                worst_image_agreement=s["worst"],
                logit_rel_l2_max=s["logit_rel"],
            )
        )
    meta = dict(
        config=str(config),
        checkpoint=str(checkpoint),
        input=str(input_path),
        device=str(device),
        images=len(images),
        pixels=stats[REFERENCE_MODE]["pixels"],
        image_sizes=sorted({f"{im.shape[0]}x{im.shape[1]}" for _, im in images}),
        threads=torch.get_num_threads(),
        warmup=warmup,
        failures=failures,
        native_low_precision=str(native_low_precision_dtype(device)).replace("torch.", ""),
    )
    return dict(meta=meta, rows=rows)


def modes_table(result: Dict[str, Any]) -> str:
    """Markdown table of ``compare_inference_modes``'s rows."""
    header = ["mode", "ms / image (median)", "img/s", "× speed", "pixel agreement"]
    header += ["worst image", "logits rel. L2 (max)"]
    body = [
        [
            row["mode"],
            f"{row['latency_ms']['median']:.1f}",
            f"{row['img_s']:.3f}",
            f"{row['speedup']:.2f}",
            f"{100 * row['pixel_agreement']:.3f}%",
            f"{100 * row['worst_image_agreement']:.3f}%",
            f"{row['logit_rel_l2_max']:.1e}",
        ]
        for row in result["rows"]
    ]
    return markdown_table(header, body)


def describe(result: Dict[str, Any]) -> str:
    meta = result["meta"]
    native = meta["native_low_precision"]
    native = "none (bfloat16 is emulated: slow)" if native == "None" else native
    return (
        f"{meta['images']} image(s) ({', '.join(meta['image_sizes'])}), "
        f"{meta['pixels']} pixels, device {meta['device']}, {meta['threads']} thread(s); "
        f"native low precision here: {native}. Agreement and logits against fp32."
    )
