"""Exact inference-time folding: BatchNorm into the preceding convolution, and the attention
output projection into the fusion convolution of APNB/AFNB.

``fuse_for_inference(model)`` returns the same model, in eval mode, computing what it computed
before (up to float rounding) with fewer layers and FLOPs. Training it afterwards is wrong: the
folded BatchNorms no longer update.
"""

from typing import Iterator, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .conv import batch_norm_affine
from .fusion import AttentionFusionBlock

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, norm: _BatchNorm) -> None:
    """``norm(conv(x)) == conv'(x)``: scale the conv's output channels, absorb the shift."""
    scale, shift = batch_norm_affine(norm)
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.clone())
    else:
        conv.bias.copy_(conv.bias * scale + shift)
    conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))


def _conv_norm_pairs(module: nn.Module) -> Iterator[Tuple[str, str]]:
    """Names of (conv, BatchNorm) children of ``module`` where the norm directly follows the
    conv in ``module``'s forward, for the layouts of mmcv/mmseg and ann_seg."""
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        names = list(children)
        for first, second in zip(names, names[1:]):
            if isinstance(children[first], _CONVS) and isinstance(children[second], _BatchNorm):
                yield first, second
        return
    norm_name = getattr(module, "norm_name", None)  # mmcv ConvModule with order (conv, norm, act)
    if norm_name and getattr(module, "order", ("conv", "norm"))[:2] == ("conv", "norm"):
        yield "conv", norm_name
    if "out_proj" in children and "out_norm" in children:  # NonLocalBlock's W_z
        yield "out_proj", "out_norm"
    for index in (1, 2, 3):  # mmseg ResNet blocks and stem: conv{i} -> norm{i}_name
        name = getattr(module, f"norm{index}_name", None)
        if name and f"conv{index}" in children:
            yield f"conv{index}", name


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a conv into it (replaced by
    ``nn.Identity``); returns how many were folded."""
    if model.training:
        raise RuntimeError("fold_batch_norms is for inference: call model.eval() first")
    folded = 0
    for module in list(model.modules()):
        for conv_name, norm_name in list(_conv_norm_pairs(module)):
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            if (
                isinstance(conv, _CONVS)
                and isinstance(norm, _BatchNorm)
                and norm.track_running_stats
                and conv.out_channels == norm.num_features
            ):
                fold_conv_bn(conv, norm)
                setattr(module, norm_name, nn.Identity())
                folded += 1
    return folded


def fold_attention_blocks(model: nn.Module) -> int:
    """``fold_()`` every APNB/AFNB (attention output projection + fusion conv + BN)."""
    blocks = [m for m in model.modules() if isinstance(m, AttentionFusionBlock)]
    for block in blocks:
        block.fold_()
    return len(blocks)


def fuse_for_inference(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """Eval mode, attention blocks folded, BatchNorms folded (in that order: a block's fusion
    BN folds into its merged conv), optionally channels-last weights. Returns ``model``."""
    model.eval()
    fold_attention_blocks(model)
    fold_batch_norms(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
