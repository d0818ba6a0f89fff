"""The speed policy: one vocabulary for how a model computes, parsed once and applied the same
way by every tool (``ann-seg infer|test|train|dist-*``) and benchmark.

=================== ========= ==============================================================
command line        suffix    meaning
=================== ========= ==============================================================
``--fast``          ``+fast`` every lever below on ``auto``; inference also folds (``--fuse``),
                              training also merges APNB/AFNB's ``W_o`` into the fusion GEMM
``--precision P``   ``+bf16`` ``fp32`` (default), ``bf16``, ``fp16``, or ``auto``: the low
                    ``+fp16`` precision the device computes natively (fp16 on CUDA, bf16 on CPUs
                    ``+fp32`` with AVX512-BF16 or AMX), else fp32, said once
``--channels-last`` ``+cl``   channels-last memory format; by default where it pays: on CUDA,
                              on the CPU in low precision and in folded inference (not in
                              CPU float32 training)
``--fuse``          ``+fuse`` inference: BatchNorms folded into convolutions, APNB/AFNB output
                              projections into their fusion (exact up to rounding)
``--compile``       ``+compile`` ``torch.compile`` of backbone, neck and decode head
``--checkpoint``    ``+cp``   training: exact activation checkpointing (less memory, more time)
``--amp``           ``+amp``  alias of ``--precision auto``; as a benchmark suffix, autocast on
                              the unmodified model (what mmseg's own ``--amp`` does)
=================== ========= ==============================================================

Low precision in inference casts the weights of backbone, neck and decode head to the low
dtype (faster than autocast: no per-op casts), keeps the classifier (``conv_seg``) and so the
logits in float32, and feeds the backbone its input in the low dtype. Training autocasts
(mmengine's ``AmpOptimWrapper`` with dynamic loss scaling for fp16 on CUDA, bf16 without;
``CPUAutocastOptimWrapper`` for bf16 on the CPU). The summary, the log and the benchmark JSON
record what ran (``ResolvedSpeed.record``).
"""

import argparse
import contextlib
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ann_seg.layers import fuse_for_inference
from ann_seg.layers.compat import native_low_precision_dtype

from .config import ConfigError
from .fast import HOOK_TYPE

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SUFFIXES = ("fast", "bf16", "fp16", "fp32", "amp", "cl", "fuse", "compile", "cp")


@dataclass(frozen=True)
class SpeedPolicy:
    """What to speed up; ``resolve(device)`` turns ``auto`` choices into decisions.

    Args:
        precision: ``'fp32'``, ``'bf16'``, ``'fp16'`` or ``'auto'`` (native low precision).
        channels_last: ``None``: where it pays (CUDA; the CPU in low precision or folded).
        fuse: inference folding.
        compile: ``torch.compile``.
        checkpoint: training activation checkpointing.
        fast_graph: training: APNB/AFNB ``W_o`` merged into the fusion GEMM.
        autocast: inference: low precision by autocast instead of cast weights.
    """

    precision: str = "fp32"
    channels_last: Optional[bool] = None
    fuse: bool = False
    compile: bool = False
    checkpoint: bool = False
    fast_graph: bool = False
    autocast: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def fast(cls, task: str, **overrides) -> "SpeedPolicy":
        """``--fast`` for ``task``: auto precision and memory format, folding for inference,
        the fast graph for training."""
        inference = task in ("infer", "test")
        levers = dict(precision="auto", fuse=inference, fast_graph=not inference)
        return cls(**{**levers, **overrides})

    def resolve(self, device: str) -> "ResolvedSpeed":
        device_type = str(device).split(":")[0]
        native = native_low_precision_dtype(device)
        note = None
        if self.precision == "auto":
            dtype = native
            if native is None:
                note = "no native low precision on this CPU (no AVX512-BF16 or AMX): float32"
        else:
            dtype = DTYPES[self.precision]
            if dtype is not None and dtype != native:
                note = f"{self.precision} is not native on this {device_type}: emulated, slow"
        channels_last = self.channels_last
        if channels_last is None:  # where it paid: not in CPU float32 training
            channels_last = device_type == "cuda" or dtype is not None or self.fuse
        return ResolvedSpeed(self, str(device), dtype, channels_last, dtype == native, note)


@dataclass(frozen=True)
class ResolvedSpeed:
    """A policy decided for one device: ``dtype`` (``None``: float32) and memory format."""

    policy: SpeedPolicy
    device: str
    dtype: Optional[torch.dtype]
    channels_last: bool
    native: bool
    note: Optional[str] = None

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def name(self) -> str:
        """``'bf16+cl+fuse'``: what ran, in the suffix vocabulary."""
        levers = [self.precision]
        levers += ["amp"] if self.policy.autocast and self.dtype is not None else []
        levers += ["cl"] if self.channels_last else []
        for lever in ("fuse", "compile", "fast_graph", "checkpoint"):
            if getattr(self.policy, lever):
                levers.append({"fast_graph": "fast", "checkpoint": "cp"}.get(lever, lever))
        return "+".join(levers)

    def record(self) -> dict:
        """For summaries, logs and benchmark JSON."""
        return dict(
            name=self.name,
            precision=self.precision,
            requested=asdict(self.policy),
            native_low_precision=self.native if self.dtype is not None else None,
            channels_last=self.channels_last,
            note=self.note,
        )

    def context(self):
        """Autocast where the policy autocasts (training-style), else nothing."""
        if self.dtype is None or not self.policy.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=self.dtype)


# ------------------------------------------------------------------------------ inference


def default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _cast_input(dtype, channels_last):
    def hook(module: nn.Module, args: tuple):
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            return None
        x = x.to(dtype) if dtype is not None else x
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        return (x, *args[1:])

    return hook


def apply_inference_speed(model: nn.Module, speed: ResolvedSpeed) -> nn.Module:
    """Eval mode and the policy applied in place to an mmseg segmentor (``EncoderDecoder``):
    folding, memory format, low-precision weights (classifier and logits stay float32), and
    compilation. Returns ``model``."""
    model.eval()
    if speed.policy.fuse:
        fuse_for_inference(model)
    parts = [getattr(model, name, None) for name in ("backbone", "neck", "decode_head")]
    parts = [p for p in parts if isinstance(p, nn.Module)]
    cast = speed.dtype if not speed.policy.autocast else None
    for part in parts:
        if speed.channels_last:
            part.to(memory_format=torch.channels_last)
        if cast is not None:
            part.to(cast)
    head = getattr(model, "decode_head", None)
    classifier = getattr(head, "conv_seg", None)
    if cast is not None and isinstance(classifier, nn.Module):
        classifier.float()
        classifier.register_forward_pre_hook(_cast_input(torch.float32, False))
    if parts and (cast is not None or speed.channels_last):
        parts[0].register_forward_pre_hook(_cast_input(cast, speed.channels_last))
    if speed.policy.compile:
        compile_parts(parts)
    return model


def compile_parts(parts: Sequence[nn.Module]) -> None:
    """``torch.compile`` each part's ``forward`` (mmseg calls ``decode_head.forward``
    directly); ``eager_forward`` keeps the original (for tracing: FLOP counting, ONNX)."""
    for part in parts:
        part.eager_forward = part.forward
        part.forward = torch.compile(part.forward)


# ------------------------------------------------------------------------------- training


def apply_training_speed(cfg, speed: ResolvedSpeed):
    """Write the policy into a training config (in place; returns ``cfg``): the optimizer
    wrapper of its precision, ``FastTrainingHook`` for the memory format, the fast graph and
    checkpointing, ``cfg.compile``. Everything it names is registered by ``import ann_seg``,
    so the dumped config also trains under mmseg's own ``tools/train.py``."""
    wrapper = cfg.optim_wrapper.get("type", "OptimWrapper")
    if speed.dtype is not None:
        if wrapper not in ("OptimWrapper", "AmpOptimWrapper", "CPUAutocastOptimWrapper"):
            raise ConfigError(
                f'low precision needs optim_wrapper.type "OptimWrapper", got {wrapper!r}'
            )
        name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}[speed.dtype]
        if speed.device.startswith("cuda"):
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.dtype = name
            # fp16 needs dynamic loss scaling; bf16 has float32's range and needs none
            cfg.optim_wrapper.loss_scale = "dynamic" if name == "float16" else 1.0
        elif name == "float16":
            raise ConfigError("fp16 training needs CUDA (loss scaling); use bf16 on the CPU")
        else:
            cfg.optim_wrapper.type = "CPUAutocastOptimWrapper"
            cfg.optim_wrapper.dtype = name
    policy = speed.policy
    if speed.channels_last or policy.fast_graph or policy.checkpoint:
        hooks = [h for h in cfg.get("custom_hooks", None) or [] if h.get("type") != HOOK_TYPE]
        hooks.append(
            dict(
                type=HOOK_TYPE,
                checkpoint=policy.checkpoint,
                channels_last=speed.channels_last,
                factored_fusion=policy.fast_graph,
            )
        )
        cfg.custom_hooks = hooks
    if policy.compile:
        cfg.compile = True
    return cfg


# ---------------------------------------------------------------------------- vocabulary


def split_suffixes(
    config: str, extra: Sequence[str] = (), task: str = "infer"
) -> Tuple[str, SpeedPolicy, tuple]:
    """``'x.py+fast+cp'`` -> ``('x.py', policy, other flags)`` for the benchmark; ``+fast`` is
    ``--fast`` of ``task``; ``extra`` lists flags the caller handles itself (``withcp``)."""
    path, *flags = config.split("+")
    unknown = [f for f in flags if f not in SUFFIXES and f not in extra]
    if unknown:
        raise ConfigError(
            f"unknown suffix(es) {unknown} in {config!r}; known: {SUFFIXES + tuple(extra)}"
        )
    precisions = [f for f in flags if f in ("bf16", "fp16", "fp32", "amp")]
    if len(precisions) > 1:
        raise ConfigError(f"{config!r} names two precisions: {precisions}")
    levers = dict(
        channels_last=True if "cl" in flags else None,
        fuse="fuse" in flags,
        compile="compile" in flags,
        checkpoint="cp" in flags,
    )
    if precisions:
        levers["precision"] = "auto" if precisions[0] == "amp" else precisions[0]
        levers["autocast"] = precisions[0] == "amp"
    if "fast" in flags:
        policy = SpeedPolicy.fast(task)
        policy = replace(policy, **{k: v for k, v in levers.items() if v not in (None, False)})
    else:
        # without +fast the memory format is contiguous unless +cl: the config as written
        levers["channels_last"] = levers["channels_last"] or False
        policy = SpeedPolicy(**levers)
    return path, policy, tuple(f for f in flags if f in extra)


def add_speed_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    """The speed options of ``task`` (``'infer'``, ``'test'``, ``'train'``)."""
    group = parser.add_argument_group("speed (docs/performance.md)")
    does = (
        "precision, channels-last and folding" if task != "train" else
        "precision, channels-last and the fast attention graph"
    )  # fmt: skip
    group.add_argument(
        "--fast",
        action="store_true",
        help=f"the fastest exact-enough mode: {does} on auto (default off)",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32, bf16, fp16, or auto: the device's native low precision, else fp32 "
        "(default fp32; auto with --fast)",
    )
    group.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory format (default: on CUDA, in low precision, and folded)",
    )
    if task != "train":
        group.add_argument(
            "--fuse",
            action="store_true",
            default=None,
            help="fold BatchNorms and APNB/AFNB projections (exact; default off, on with --fast)",
        )
    group.add_argument(
        "--compile", action="store_true", help="torch.compile the model (default off)"
    )
    if task == "train":
        group.add_argument(
            "--checkpoint",
            dest="activation_checkpoint",
            action="store_true",
            help="exact activation checkpointing: less memory, slower steps (default off)",
        )
        group.add_argument(
            "--fast-checkpoint", action="store_true", help="--fast --checkpoint (default off)"
        )
        group.add_argument("--amp", action="store_true", help="--precision auto (default off)")
    else:
        group.add_argument(
            "--amp",
            nargs="?",
            const="auto",
            choices=("off", "auto", "on"),
            help="alias: off = --precision fp32, auto = auto, on = bf16 (CPU) / fp16 (CUDA)",
        )


def speed_policy(args: argparse.Namespace, task: str, device: str = "cpu") -> SpeedPolicy:
    """The policy the parsed ``add_speed_arguments`` options ask for (explicit flags win over
    ``--fast``)."""
    fast = args.fast or getattr(args, "fast_checkpoint", False)
    policy = SpeedPolicy.fast(task) if fast else SpeedPolicy()
    precision = args.precision
    amp = getattr(args, "amp", None)
    if amp not in (None, False):
        alias = {True: "auto", "off": "fp32", "auto": "auto"}.get(amp)
        alias = alias or ("fp16" if str(device).startswith("cuda") else "bf16")
        if precision is not None and precision != alias:
            raise ConfigError(f"--amp {amp} and --precision {precision} disagree")
        precision = alias
    overrides = dict(precision=precision, channels_last=args.channels_last)
    overrides["fuse"] = getattr(args, "fuse", None)
    overrides["compile"] = args.compile or None
    if getattr(args, "activation_checkpoint", False) or getattr(args, "fast_checkpoint", False):
        overrides["checkpoint"] = True
    return replace(policy, **{k: v for k, v in overrides.items() if v is not None})


def announce(speed: ResolvedSpeed, logger: str = "current") -> None:
    """One log line: what runs, and the note where the request could not be met natively."""
    line = f"speed: {speed.name}"
    if speed.note:
        line += f" ({speed.note})"
    print_log(line, logger=logger)
