"""The fast training mode (``ann-seg train --fast``, ``--fast-checkpoint``, the benchmark's
``+fast``/``+cp``): ``enable_fast_training`` changes how a built segmentor computes, not what.
Parameters, buffers and state-dict keys stay (checkpoints load both ways, strictly); outputs
and gradients equal the plain model's up to float rounding.

* Channels-last (the speed policy's choice: CUDA, and low precision on the CPU): 4-d
  parameters channels-last and the backbone's input converted on entry (a pre-hook), so the
  convolutions run NHWC and the attention blocks read tokens without copies.
* APNB/AFNB: ``W_o`` merged into the fusion GEMM in the autograd graph (``_factored_fusion``).
* ``checkpoint=True``: exact activation checkpointing (``ann_seg.layers.checkpointing``) of
  every residual block of mmseg's ResNets and of every APNB/AFNB. Less memory, more time.

In mmengine's Runner it is ``FastTrainingHook`` (added by the speed policy's
``apply_training_speed``), applied in ``before_train``: after the weights are initialised and
loaded, since random initialisation of a channels-last tensor draws other values.
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
        self.levers = dict(
            checkpoint=checkpoint, channels_last=channels_last, factored_fusion=factored_fusion
        )
        for name, value in self.levers.items():
            if not isinstance(value, bool) and not (name == "channels_last" and value is None):
                raise ConfigError(f"{HOOK_TYPE}: {name} must be True or False, got {value!r}")

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
