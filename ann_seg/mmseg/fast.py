"""The fast training mode (``ann-seg train --fast``, ``--fast-checkpoint``): one function,
``enable_fast_training``, applied to a built segmentor by the training hook and by the
benchmark's ``+fast`` / ``+cp`` variants.

It changes how the model computes, not what: parameters, buffers and state-dict keys stay as
they are (a checkpoint saved in fast mode loads strictly into the plain model and back), and
every output and gradient equals the plain model's up to float rounding.

* Channels-last (the speed policy turns it on on CUDA and for low precision on the CPU; in CPU
  float32 it did not pay: the R-101 backbone's step 1.06-1.09x slower on a Xeon):
  every 4-d parameter (conv weights) in channels-last memory format, and the backbone's input
  converted on entry (a forward pre-hook), so the data preprocessor's output and the
  benchmark's images reach the convolutions NHWC, and the attention blocks read their queries
  and the pooled anchors in the token layout without copies.
* APNB/AFNB: the output projection ``W_o`` merged into the fusion GEMM in the autograd graph
  (``AttentionFusionBlock._factored_fusion``; no concatenation, no ``W_o`` output map).
* ``checkpoint=True``: activation checkpointing of every residual block of mmseg's ResNets
  (the units mmseg's ``with_cp`` checkpoints) and of every APNB/AFNB, exact
  (``ann_seg.layers.checkpointing``: dropout masks replayed, BatchNorm statistics updated once
  per step; mmseg's own ``with_cp`` updates them twice). Less memory, more time.

In mmengine's Runner the mode is the hook ``FastTrainingHook`` (config:
``custom_hooks = [dict(type="FastTrainingHook", checkpoint=False)]``; the speed policy's
``apply_training_speed`` adds it). It applies the mode in ``before_train``, after the weights
were initialised and a checkpoint loaded: random initialisation of a channels-last tensor
draws its values in memory order, so converting first would train from other initial weights
than the plain mode.
"""

from typing import Dict, Optional

import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.models.backbones.resnet import BasicBlock, Bottleneck
from mmseg.registry import HOOKS

from ann_seg.layers import AttentionFusionBlock, set_activation_checkpointing

from .config import ConfigError

RESIDUAL_BLOCKS = (BasicBlock, Bottleneck)  # mmseg's ResNet/ResNetV1c/ResNeXt blocks
HOOK_TYPE = "FastTrainingHook"


def _channels_last_input(module: nn.Module, args: tuple):
    x = args[0]
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def channels_last_pays(model: nn.Module) -> bool:
    """The default of the channels-last lever: on where the model's parameters are on CUDA."""
    parameter = next(model.parameters(), None)
    return parameter is not None and parameter.device.type == "cuda"


def enable_fast_training(
    model: nn.Module,
    *,
    channels_last: Optional[bool] = None,
    factored_fusion: bool = True,
    checkpoint: bool = False,
) -> Dict[str, int]:
    """Apply the fast training mode to a built segmentor (in place; see the module docstring).

    Args:
        model: an mmseg segmentor (``EncoderDecoder``), or any module holding APNB/AFNB or
            mmseg ResNet blocks (then only what it holds is changed).
        channels_last: parameters and the backbone's input in channels-last format; None:
            on CUDA yes, on the CPU no (``channels_last_pays``).
        factored_fusion: APNB/AFNB with ``W_o`` merged into the fusion GEMM.
        checkpoint: exact activation checkpointing of mmseg's residual blocks and of
            APNB/AFNB.

    Returns counts of what was changed: ``attention_blocks``, ``checkpointed``,
    ``channels_last_input`` (1 if the backbone got the input hook). Applying it twice is
    harmless (the input hook is registered once).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"enable_fast_training needs an nn.Module, got {type(model).__name__}")
    counts = dict(attention_blocks=0, checkpointed=0, channels_last_input=0)
    if channels_last is None:
        channels_last = channels_last_pays(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        backbone = getattr(model, "backbone", None)
        if isinstance(backbone, nn.Module):
            if _channels_last_input not in backbone._forward_pre_hooks.values():
                backbone.register_forward_pre_hook(_channels_last_input)
            counts["channels_last_input"] = 1
    for module in model.modules():
        if isinstance(module, AttentionFusionBlock):
            counts["attention_blocks"] += 1
            if factored_fusion:
                module.factored_fusion = True
        if checkpoint and isinstance(module, RESIDUAL_BLOCKS + (AttentionFusionBlock,)):
            if isinstance(module, RESIDUAL_BLOCKS):
                module.with_cp = False  # ours replaces mmseg's (inexact for BN statistics)
            set_activation_checkpointing(module)
            counts["checkpointed"] += 1
    return counts


@HOOKS.register_module()
class FastTrainingHook(Hook):
    """Applies ``enable_fast_training`` to the runner's model before training starts.

    Args:
        checkpoint: also exact activation checkpointing (less memory, more time).
        channels_last: None (default) on CUDA, not on the CPU; True/False force it.
        factored_fusion: ``W_o`` merged into the fusion GEMM (default True).
    """

    priority = "VERY_HIGH"

    def __init__(
        self,
        checkpoint: bool = False,
        channels_last: Optional[bool] = None,
        factored_fusion: bool = True,
    ):
        for name, value in (
            ("checkpoint", checkpoint),
            ("channels_last", channels_last),
            ("factored_fusion", factored_fusion),
        ):
            if not isinstance(value, bool) and not (name == "channels_last" and value is None):
                raise ConfigError(f"{HOOK_TYPE}: {name} must be True or False, got {value!r}")
        self.levers = dict(
            checkpoint=checkpoint, channels_last=channels_last, factored_fusion=factored_fusion
        )

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        counts = enable_fast_training(model, **self.levers)
        done = [
            "channels-last" if counts["channels_last_input"] else "contiguous",
            f"{counts['attention_blocks']} attention block(s)"
            + (" with W_o merged into the fusion" if self.levers["factored_fusion"] else ""),
        ]
        if self.levers["checkpoint"]:
            done.append(f"{counts['checkpointed']} block(s) checkpointed")
        print_log(f"fast training mode: {', '.join(done)}", logger="current")
