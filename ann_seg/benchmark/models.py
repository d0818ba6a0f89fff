"""Config-driven benchmark of segmentors, backbones and decode heads (``ann-seg benchmark``).

Every config is built by ``ann_seg.mmseg.build_segmentor`` (default init, no download, SyncBN
-> BN). For each input shape the configs are timed interleaved, then the peak memory of one
more step and the forward FLOPs are counted per config. Parts (``model``: the
``EncoderDecoder`` in ``mode='tensor'``, ``backbone``, ``head`` on features shaped as the
backbone's) and the method: docs/benchmarks.md.
"""

import copy
import logging
import math
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import complexity_analysis, get_model_complexity_info, parameter_count
from mmengine.analysis.jit_handles import addmm_flop_jit, get_shape
from mmengine.logging import MMLogger
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from ann_seg.layers.conv import check_choice
from ann_seg.mmseg import build_segmentor, enable_fast_training
from ann_seg.mmseg.config import config_name as file_stem
from ann_seg.mmseg.fast import RESIDUAL_BLOCKS
from ann_seg.mmseg.speed import SpeedPolicy, apply_inference_speed, compile_parts, split_suffixes

from .measure import (
    MIB,
    REFERENCE_CONV,
    TimingCase,
    format_error,
    latency_stats,
    reference_conv_case,
    time_and_measure,
)
from .report import config_table, environment, plot_latency_memory, settings_line, write_json

PARTS = ("model", "backbone", "head")
MODES = ("infer", "train")
DEFAULT_SHAPE = (512, 1024)
Shape = Tuple[int, int]


@dataclass
class BenchmarkSettings:
    """What to measure and how (the CLI options of ``ann-seg benchmark``)."""

    part: str = "model"
    mode: str = "infer"
    device: str = "cpu"
    batch_size: int = 1
    repeat: int = 10
    warmup: int = 2
    flops: bool = True
    flop_rate: bool = False
    cfg_options: Optional[dict] = None

    def __post_init__(self):
        check_choice("part", self.part, PARTS)
        check_choice("mode", self.mode, MODES)
        if self.batch_size < 1 or self.repeat < 1 or self.warmup < 0:
            raise ValueError("need batch_size >= 1, repeat >= 1 and warmup >= 0")
        if self.flop_rate and not self.flops:
            raise ValueError("the FLOP rate needs FLOP counting (drop --no-flops)")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available")


def parse_shapes(values: Optional[Sequence[int]]) -> Optional[List[Shape]]:
    """``[H1, W1, H2, W2, ...]`` -> ``[(H1, W1), (H2, W2), ...]`` (``None`` stays ``None``)."""
    if values is None:
        return None
    if len(values) == 0 or len(values) % 2:
        raise ValueError(f"shapes need pairs H W, got {list(values)}")
    shapes = [(int(h), int(w)) for h, w in zip(values[::2], values[1::2])]
    if any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"shapes must be positive, got {shapes}")
    return shapes


BENCHMARK_ONLY = ("withcp",)  # mmseg's own with_cp, for comparison with our +cp


def split_variant(config: str, mode: str = "infer") -> Tuple[str, SpeedPolicy, Tuple[str, ...]]:
    """``'x.py+fast+cp'`` -> ``('x.py', policy, ())``: the speed policy of the suffixes
    (``ann_seg.mmseg.speed.split_suffixes``) and ``+withcp`` (mmseg's ``with_cp``)."""
    return split_suffixes(config, BENCHMARK_ONLY, task=mode)


def config_name(config: str) -> str:
    """Short label: ``mmseg::ann/x.py`` -> ``mmseg::x``; ``configs/ann/x.py+fuse`` -> ``x+fuse``."""
    path, *flags = config.split("+")
    scope = path.split("::")[0] + "::" if "::" in path else ""
    return scope + file_stem(path) + "".join(f"+{flag}" for flag in flags)


def build_benchmark_model(
    config: str, cfg_options: Optional[dict] = None, device: str = "cpu", mode: str = "infer"
):
    """``(cfg, model)`` of ``config`` (with ``+suffix`` speed levers) on ``device``, built by
    ``ann_seg.mmseg.build_segmentor`` (no download, SyncBN -> BN), then the policy applied as
    the tools apply it: ``apply_inference_speed`` for ``mode='infer'``, the fast training
    mode's levers (``enable_fast_training``) and autocast for ``'train'``."""
    path, policy, extra = split_variant(config, mode)
    if mode == "train" and policy.fuse:
        raise ValueError("the +fuse variant folds BatchNorms: inference only (--mode infer)")
    model = build_segmentor(path, device=device, cfg_options=cfg_options)
    speed = policy.resolve(device)
    if mode == "infer":
        apply_inference_speed(model, speed)
    else:
        if speed.channels_last or policy.fast_graph or policy.checkpoint:
            enable_fast_training(
                model,
                channels_last=speed.channels_last,
                factored_fusion=policy.fast_graph,
                checkpoint=policy.checkpoint,
            )
        if policy.compile:
            names = ("backbone", "neck", "decode_head")
            compile_parts([m for m in (getattr(model, n, None) for n in names) if m is not None])
    if "withcp" in extra:
        for module in model.modules():
            if isinstance(module, RESIDUAL_BLOCKS):
                module.with_cp = True
    model.benchmark_speed = speed
    return model.cfg, model


def default_shape(cfg) -> Shape:
    """The config's crop size (``crop_size`` or the preprocessor's ``size``), else 512x1024."""
    size = cfg.get("crop_size", None) or cfg.model.get("data_preprocessor", {}).get("size")
    return (int(size[0]), int(size[1])) if size else DEFAULT_SHAPE


def feature_shapes(model: nn.Module, shape: Shape, batch_size: int = 1) -> List[Tuple[int, ...]]:
    """Shapes of ``model.extract_feat`` for an input ``(batch_size, 3, *shape)``.

    Runs a copy of backbone (+ neck) on the ``meta`` device (no compute, no memory); if an op
    lacks a meta kernel, runs the real modules once on a batch of 1 instead.
    """
    parts = nn.ModuleDict(dict(backbone=model.backbone))
    if getattr(model, "with_neck", False):
        parts["neck"] = model.neck

    def extract(modules, x):
        feats = modules["backbone"](x)
        return modules["neck"](feats) if "neck" in modules else feats

    try:
        meta = copy.deepcopy(parts).to("meta").eval()
        with torch.no_grad():
            feats = extract(meta, torch.empty(batch_size, 3, *shape, device="meta"))
    except Exception:
        device = next(model.parameters()).device
        was_training = parts.training
        parts.eval()
        with torch.no_grad():
            feats = extract(parts, torch.zeros(1, 3, *shape, device=device))
        parts.train(was_training)
    return [(batch_size, *f.shape[1:]) for f in feats]


def random_data_samples(num_classes: int, shape: Shape, batch_size: int, device: str):
    """``SegDataSample`` s with random ``gt_sem_seg`` labels of ``shape``."""

    samples = []
    for _ in range(batch_size):
        sample = SegDataSample(metainfo=dict(img_shape=shape, pad_shape=shape, ori_shape=shape))
        labels = torch.randint(0, num_classes, (1, *shape), device=device)
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return samples


class _InferenceForward(nn.Module):
    """``EncoderDecoder._forward`` (``mode='tensor'``) holding only the modules it runs, so
    that parameters and FLOPs count backbone + neck + decode head, not the auxiliary head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.neck = model.neck if getattr(model, "with_neck", False) else None
        self.decode_head = model.decode_head

    def forward(self, images: torch.Tensor):
        feats = self.backbone(images)
        if self.neck is not None:
            feats = self.neck(feats)
        return self.decode_head.forward(feats)


class _HeadForward(nn.Module):
    """The decode head called on features passed as separate arguments (for tracing)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, *feats: torch.Tensor):
        return self.head.forward(list(feats))


@dataclass
class PartStep:
    """One benchmark step of a part and what FLOPs/parameters are counted on."""

    step: Callable[[], None]
    module: nn.Module  # modules the inference forward runs (params, FLOPs)
    flops_inputs: tuple  # batch-1 inputs of ``module``
    input_shapes: List[List[int]]


def make_part_step(
    model: nn.Module, part: str, settings: BenchmarkSettings, shape: Shape
) -> PartStep:
    """Inputs and the step closure for ``part`` of ``model`` at ``shape``."""
    device, batch = settings.device, settings.batch_size
    train = settings.mode == "train"
    speed = model.benchmark_speed
    model.train(train)
    # inputs as the real pipeline hands them over: float32, contiguous (the policy's input
    # hooks convert them, timed); head features as the backbone would produce them
    cast = speed.dtype if not (train or speed.policy.autocast) else None
    feature_format = torch.channels_last if speed.channels_last else torch.contiguous_format
    autocast = (
        torch.autocast(device.split(":")[0], dtype=speed.dtype)
        if speed.dtype is not None and (train or speed.policy.autocast)
        else nullcontext()
    )
    grad = torch.enable_grad if train else torch.no_grad
    images = torch.randn(batch, 3, *shape, device=device)
    samples = None
    if train and part != "backbone":
        samples = random_data_samples(model.decode_head.num_classes, shape, batch, device)

    if part == "head":
        feats = [
            torch.randn(s, device=device, dtype=cast).contiguous(memory_format=feature_format)
            for s in feature_shapes(model, shape, batch)
        ]
        module, flops_inputs = _HeadForward(model.decode_head), tuple(f[:1] for f in feats)
        input_shapes = [list(f.shape) for f in feats]

        def forward():
            if train:
                return model.decode_head.loss(feats, samples, model.train_cfg)
            return model.decode_head.forward(feats)
    elif part == "backbone":
        module, flops_inputs = model.backbone, (images[:1],)
        input_shapes = [list(images.shape)]

        def forward():
            outs = model.backbone(images)
            return dict(loss=sum(o.float().mean() for o in outs)) if train else outs
    else:
        module, flops_inputs = _InferenceForward(model), (images[:1],)
        input_shapes = [list(images.shape)]

        def forward():
            return model.loss(images, samples) if train else model(images, mode="tensor")

    def step() -> None:
        with grad():
            with autocast:
                out = forward()
            if train:  # losses as mmengine's train_step sums them
                model.parse_losses(out)[0].backward()
                model.zero_grad(set_to_none=True)  # grads are counted in every step's peak

    return PartStep(step, module, flops_inputs, input_shapes)


def _sdpa_flop_jit(inputs, outputs) -> int:
    """FLOPs (one multiply-add = 1) of ``scaled_dot_product_attention``: ``N S (Ck + Cv)``
    per batch/head: the ``q k^T`` and ``attn v`` products."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _baddbmm_flop_jit(inputs, outputs) -> int:
    """``baddbmm(input, batch1 (B, n, k), batch2 (B, k, m))``: ``B n k m`` multiply-adds."""
    (batch, n, k), m = get_shape(inputs[1]), get_shape(inputs[2])[-1]
    return batch * n * k * m


# GEMM-like ops missing from mmengine's table (our attention and folded fusion use them)
EXTRA_FLOP_OPS = {
    "aten::scaled_dot_product_attention": _sdpa_flop_jit,
    "aten::addmm_": addmm_flop_jit,
    "aten::baddbmm": _baddbmm_flop_jit,
    "aten::baddbmm_": _baddbmm_flop_jit,
}


@contextmanager
def _quiet_flop_analysis():
    """Count the ops of ``EXTRA_FLOP_OPS`` while active; hide mmengine's warnings about
    ops it does not count (element-wise ops, pooling...)."""
    table = complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS
    added = {key: handle for key, handle in EXTRA_FLOP_OPS.items() if key not in table}
    table.update(added)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        for key in added:
            del table[key]


def count_complexity(module: nn.Module, inputs: tuple) -> Dict[str, float]:
    """Forward FLOPs and activations (mmengine's ``get_model_complexity_info``, one
    multiply-add = 1 FLOP, SDPA included) of ``module`` on ``inputs``, in eval mode."""

    was_training = module.training
    module.eval()
    compiled = [m for m in module.modules() if hasattr(m, "eager_forward")]
    for m in compiled:  # the tracer cannot enter compiled code: count the eager forward
        m.forward, m.eager_forward = m.eager_forward, m.forward
    try:
        with _quiet_flop_analysis(), torch.no_grad():
            info = get_model_complexity_info(
                module, inputs=inputs, show_table=False, show_arch=False
            )
    finally:
        for m in compiled:
            m.forward, m.eager_forward = m.eager_forward, m.forward
        module.train(was_training)
    return dict(flops=float(info["flops"]), activations=float(info["activations"]))


@dataclass
class _Entry:
    config: str
    name: str
    shape: Optional[Shape] = None
    model: Optional[nn.Module] = None
    part_step: Optional[PartStep] = None
    case: Optional[TimingCase] = None
    error: Optional[str] = None
    stage: Optional[str] = None
    reference_gflop_s: Optional[float] = None
    row: Optional[Dict[str, Any]] = None


def _unique_names(configs: Sequence[str]) -> List[str]:
    names, seen = [], {}
    for config in configs:
        name = config_name(config)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names


def benchmark_configs(
    configs: Sequence[str],
    settings: BenchmarkSettings,
    shapes: Optional[Sequence[Shape]] = None,
    progress: bool = True,
) -> List[Dict[str, Any]]:
    """Measure every config at every shape; one result dict per (config, shape).

    ``shapes=None`` uses each config's crop size. Configs that fail to build or run give
    rows with ``status='error'``, ``stage`` (``'build'`` or ``'run'``) and ``error``.
    Ratios (``latency_ratio``, ``memory_ratio``) are relative to the first config measured
    at the same shape (``reference``).
    """
    entries: List[_Entry] = []
    for config, name in zip(configs, _unique_names(configs)):
        try:
            cfg, model = build_benchmark_model(
                config, settings.cfg_options, settings.device, settings.mode
            )
            config_shapes = list(shapes) if shapes else [default_shape(cfg)]
        except Exception as error:
            for shape in shapes or [None]:
                entries.append(
                    _Entry(config, name, shape, error=format_error(error), stage="build")
                )
            continue
        for shape in config_shapes:
            entries.append(_Entry(config, name, tuple(shape), model))

    for shape in dict.fromkeys(e.shape for e in entries if e.model is not None):
        group = [e for e in entries if e.model is not None and e.shape == shape]
        _measure_group(group, settings, shape, progress)
    rows = [entry.row or _result_row(entry, settings) for entry in entries]
    _add_ratios(rows)
    return rows


def _measure_group(
    group: List[_Entry], settings: BenchmarkSettings, shape: Shape, progress: bool
) -> None:
    """Time the entries of one shape interleaved, then memory and FLOPs per entry."""
    for entry in group:
        try:
            entry.part_step = make_part_step(entry.model, settings.part, settings, shape)
            entry.case = TimingCase(entry.name, entry.part_step.step)
        except Exception as error:
            entry.error, entry.stage = format_error(error), "run"
    cases = [e.case for e in group if e.case is not None]
    reference = None
    if settings.flop_rate:  # timed in the same rounds, so machine noise hits it alike
        reference, reference_flops = reference_conv_case(settings.device)
        cases.append(reference)
    what = f"config(s) at {shape[0]}x{shape[1]}"
    time_and_measure(cases, settings.repeat, settings.warmup, settings.device, progress, what)
    if reference is not None and reference.ok:
        rate = reference_flops / latency_stats(reference.times)["median"] * 1e3 / 1e9
        for entry in group:
            entry.reference_gflop_s = rate
    for entry in group:
        if entry.case is not None and not entry.case.ok:
            entry.error, entry.stage = format_error(entry.case.error), "run"
    if progress and settings.flops:
        print("counting parameters and FLOPs", file=sys.stderr)
    for entry in group:
        entry.row = _result_row(entry, settings)
        entry.part_step = entry.case = None  # free this shape's inputs


def _result_row(entry: _Entry, settings: BenchmarkSettings) -> Dict[str, Any]:
    row: Dict[str, Any] = dict(
        config=entry.config,
        name=entry.name,
        shape=list(entry.shape) if entry.shape else None,
        part=settings.part,
        mode=settings.mode,
        device=settings.device,
        speed=entry.model.benchmark_speed.record() if entry.model is not None else None,
        batch_size=settings.batch_size,
        status="ok" if entry.error is None else "error",
    )
    if entry.error is not None:
        row.update(stage=entry.stage, error=entry.error)
        return row
    step, case = entry.part_step, entry.case
    stats = latency_stats(case.times)
    row.update(
        input_shapes=step.input_shapes,
        repeats=len(case.times),
        latency_ms=stats,
        times_ms=[t * 1e3 for t in case.times],
        throughput_img_s=settings.batch_size / (stats["median"] / 1e3),
        peak_memory_mib=case.peak_bytes / MIB,
        params_m=parameter_count(step.module)[""] / 1e6,
        flops_g=None,
        activations_m=None,
    )
    if settings.flops:
        try:
            complexity = count_complexity(step.module, step.flops_inputs)
            row.update(
                flops_g=complexity["flops"] / 1e9, activations_m=complexity["activations"] / 1e6
            )
        except Exception as error:  # FLOPs are optional: keep the timing
            row["flops_error"] = format_error(error)
    if entry.reference_gflop_s and row["flops_g"]:
        achieved = 2 * row["flops_g"] * settings.batch_size / (stats["median"] / 1e3)
        row.update(
            reference_conv_gflop_s=entry.reference_gflop_s,
            achieved_gflop_s=achieved,
            flop_rate_ratio=achieved / entry.reference_gflop_s,
        )
    return row


def _add_ratios(rows: List[Dict[str, Any]]) -> None:
    references: Dict[tuple, Dict[str, Any]] = {}
    for row in rows:
        if row["status"] != "ok":
            continue
        ref = references.setdefault(tuple(row["shape"]), row)
        row["reference"] = ref["name"]
        row["latency_ratio"] = row["latency_ms"]["median"] / ref["latency_ms"]["median"]
        ref_mem = ref["peak_memory_mib"]
        row["memory_ratio"] = row["peak_memory_mib"] / ref_mem if ref_mem > 0 else None


def run_benchmark(
    configs: Sequence[str],
    settings: BenchmarkSettings,
    shapes: Optional[Sequence[Shape]] = None,
    json_path: Optional[str] = None,
    plot_path: Optional[str] = None,
    progress: bool = True,
) -> int:
    """``ann-seg benchmark``: measure, print the markdown table, write JSON/plot.

    ``settings.flop_rate``: also time this machine's float32 conv (``reference_conv_case``)
    in the same interleaved rounds and report each config's achieved rate (``2 * GFLOPs /
    latency``; GFLOPs here count multiply-adds) against it.

    Returns the exit status: 0 if every config was measured, 1 if any failed.
    """
    meta = environment(settings.device)  # load average before our own load
    rows = benchmark_configs(configs, settings, shapes, progress)
    print(settings_line(settings, meta))
    print()
    print(config_table(rows))
    if settings.flop_rate:
        print()
        for row in rows:
            if row.get("achieved_gflop_s"):
                print(
                    f"- {row['name']} at {row['shape'][0]}x{row['shape'][1]}: "
                    f"{row['achieved_gflop_s']:.1f} GFLOP/s = "
                    f"{100 * row['flop_rate_ratio']:.0f}% of the reference "
                    f"({REFERENCE_CONV}: {row['reference_conv_gflop_s']:.1f} GFLOP/s, timed "
                    "in the same rounds)"
                )
    if settings.repeat < 3:
        print(
            f"note: {settings.repeat} timed round(s): the ratios are unreliable (use --repeat 3 "
            "or more, on an otherwise idle machine)",
            file=sys.stderr,
        )
    if json_path:
        write_json(json_path, dict(meta=meta, settings=vars(settings), results=rows))
    if plot_path:
        plot_latency_memory(
            rows,
            plot_path,
            title=f"{settings.part} ({settings.mode}), "
            f"batch {settings.batch_size}, {settings.device}, "
            f"{meta['threads']} thread(s)",
        )
    failed = [r for r in rows if r["status"] != "ok"]
    for row in failed:
        print(f"error: {row['name']} ({row['stage']}): {row['error']}", file=sys.stderr)
    return 1 if failed else 0
