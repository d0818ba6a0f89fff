"""Non-local (Wang et al. 2018) and CGNL (Yue et al. 2018) decode heads.

Both follow mmseg's ``NLHead`` layout, so the family compares head to head:
``3x3 conv -> block -> 3x3 conv [-> concat input, 3x3 conv] -> classifier``.
"""

from typing import Optional

import torch
from mmseg.models.decode_heads.fcn_head import FCNHead
from mmseg.registry import MODELS

from ann_seg.layers import CGNLBlock, NonLocalBlock

from .cfg import check_single_in_channels, norm_layer_from_cfg


class _BlockHead(FCNHead):
    """FCNHead with two convs and an attention block between them, whose bottleneck has
    ``channels // reduction`` channels (``reduced_channels``)."""

    def __init__(self, reduction: int = 2, **kwargs):
        check_single_in_channels(type(self).__name__, kwargs.get("in_channels"))
        super().__init__(num_convs=2, **kwargs)
        if not isinstance(reduction, int) or reduction <= 0:
            name = type(self).__name__
            raise ValueError(f"{name}: reduction must be a positive int, got {reduction!r}")
        self.reduced_channels = self.channels // reduction

    def forward(self, inputs) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        out = self.convs[1](self.block(self.convs[0](x)))
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)


@MODELS.register_module()
class NLSegHead(_BlockHead):
    """Non-local head (registered as ``NLSegHead``; mmseg's ``NLHead`` keeps its name).

    Args:
        mode: pairwise function: ``'embedded_gaussian'``, ``'gaussian'``, ``'dot_product'`` or
            ``'concatenation'``.
        reduction: bottleneck ``C' = channels // reduction`` (2 in the paper).
        sub_sample: max-pool keys and values by 2 (the paper's subsampling).
        use_scale: divide softmax logits by ``sqrt(C')`` (mmseg's default ``True``).
        attention_backend: ``'auto'`` (SDPA: no N x N matrix), ``'sdpa'`` or ``'explicit'``.
        **kwargs: ``FCNHead`` arguments (``num_convs`` is fixed to 2).
    """

    def __init__(
        self,
        mode: str = "embedded_gaussian",
        reduction: int = 2,
        sub_sample: bool = False,
        use_scale: bool = True,
        attention_backend: str = "auto",
        **kwargs,
    ):
        super().__init__(reduction, **kwargs)
        self.block = NonLocalBlock(
            self.channels,
            max(self.reduced_channels, 1),
            mode=mode,
            sub_sample=sub_sample,
            use_scale=use_scale,
            norm_layer=norm_layer_from_cfg(self.norm_cfg),
            backend=attention_backend,
        )


@MODELS.register_module()
class CGNLSegHead(_BlockHead):
    """Compact generalized non-local head (registered as ``CGNLSegHead``).

    Args:
        groups: channel groups of the generalized attention (8 as released).
        kernel: ``'gaussian'`` (Taylor-expanded RBF) or ``'dot'``.
        order: Taylor order of the Gaussian kernel.
        gamma: RBF width.
        reduction: bottleneck ``C' = channels // reduction``.
        use_scale: scale the dot kernel by ``1 / sqrt(C' N)``.
        block_norm_cfg: the norm after the block's ``W_z``; ``None`` (default) is the paper's
            ``GroupNorm(groups)``. The head's convs use ``norm_cfg`` as every mmseg head.
        **kwargs: ``FCNHead`` arguments (``num_convs`` is fixed to 2).
    """

    def __init__(
        self,
        groups: int = 8,
        kernel: str = "gaussian",
        order: int = 3,
        gamma: float = 1e-4,
        reduction: int = 2,
        use_scale: bool = False,
        inter_channels: Optional[int] = None,
        block_norm_cfg: Optional[dict] = None,
        **kwargs,
    ):
        super().__init__(reduction, **kwargs)
        self.block = CGNLBlock(
            self.channels,
            self.reduced_channels if inter_channels is None else inter_channels,
            groups=groups,
            kernel=kernel,
            order=order,
            gamma=gamma,
            use_scale=use_scale,
            norm_layer="gn" if block_norm_cfg is None else norm_layer_from_cfg(block_norm_cfg),
        )
