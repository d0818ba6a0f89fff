"""The Asymmetric Non-local Network decode heads (Zhu et al., ICCV 2019)."""

from typing import Optional, Sequence

import torch
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS

from ann_seg.layers import AFNB, APNB

from .cfg import (
    act_layer_from_cfg,
    check_in_channels,
    check_single_in_channels,
    norm_layer_from_cfg,
)


@MODELS.register_module()
class APNBSegHead(BaseDecodeHead):
    """APNB alone on one backbone stage: ``3x3 conv -> APNB -> classifier`` (the ANN head
    without AFNB's cross-level fusion; the paper's APNB-only ablation).

    Args:
        key_channels: C' of the query/key projections.
        value_channels: channels of the value projections (``None``: ``key_channels``).
        pool_sizes: pyramid pooling bins that sample keys/values.
        share: APNB projection sharing: ``'query_key'`` (released code), ``'key_value'``
            (the paper's figure) or ``'none'``.
        fusion: ``'concat'`` (paper) or ``'add'`` (residual).
        block_dropout: dropout after the block's fusion.
        attention_backend: ``'auto'``, ``'sdpa'`` or ``'explicit'`` (see ``attend``).
        **kwargs: ``BaseDecodeHead`` arguments with a single ``in_channels``/``in_index``.
    """

    def __init__(
        self,
        key_channels: int = 256,
        value_channels: Optional[int] = None,
        pool_sizes: Sequence[int] = (1, 3, 6, 8),
        share: str = "query_key",
        fusion: str = "concat",
        block_dropout: float = 0.05,
        attention_backend: str = "auto",
        **kwargs,
    ):
        kwargs.setdefault("dropout_ratio", 0.0)
        self._check_inputs(kwargs)
        super().__init__(**kwargs)
        block = dict(
            key_channels=key_channels,
            value_channels=value_channels,
            pool_sizes=pool_sizes,
            fusion=fusion,
            dropout=block_dropout,
            norm_layer=norm_layer_from_cfg(self.norm_cfg),
            act_layer=act_layer_from_cfg(self.act_cfg),
            backend=attention_backend,
        )
        self._build_fusion(block)
        self.bottleneck = ConvModule(
            self._bottleneck_in_channels(),
            self.channels,
            3,
            padding=1,
            conv_cfg=self.conv_cfg,
            norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg,
        )
        self.context = APNB(self.channels, self.channels, share=share, **block)

    def _check_inputs(self, kwargs: dict) -> None:
        check_single_in_channels(type(self).__name__, kwargs.get("in_channels"))

    def _build_fusion(self, block: dict) -> None:
        """Blocks before the bottleneck conv: none here, AFNB in ``ANNSegHead``."""

    def _bottleneck_in_channels(self) -> int:
        return self.in_channels

    def _forward_feature(self, inputs) -> torch.Tensor:
        return self.context(self.bottleneck(self._transform_inputs(inputs)))

    def forward(self, inputs) -> torch.Tensor:
        return self.cls_seg(self._forward_feature(inputs))


@MODELS.register_module()
class ANNSegHead(APNBSegHead):
    """ANN head: ``AFNB(stage 4, stage 5) -> 3x3 conv -> APNB -> classifier``.

    Registered as ``ANNSegHead`` (mmseg's own ``ANNHead`` keeps its name). Defaults follow the
    authors' released model (MendelXu/ANN): AFNB 1024 + 2048 -> 2048, key/value channels 256,
    pyramid anchors (1, 3, 6, 8) (S = 110), concat fusion with 1x1 conv + BN, dropout 0.05;
    3x3 conv 2048 -> 512 + BN + ReLU; APNB 512 -> 512 with query/key sharing, concat fusion with
    1x1 conv + BN + ReLU, dropout 0.05; then the classifier (``dropout_ratio`` before it, 0 as
    released).

    Args:
        afnb_share: AFNB projection sharing: ``'none'`` (released) or ``'key_value'``.
        fusion_channels: AFNB output channels (``None``: the stage-5 channels).
        **kwargs: ``APNBSegHead`` arguments, for both blocks (``share`` for APNB only);
            ``in_channels``/``in_index`` list the low- and high-level inputs, e.g.
            ``[1024, 2048]``/``[2, 3]``.
    """

    def __init__(self, afnb_share: str = "none", fusion_channels: Optional[int] = None, **kwargs):
        self.afnb_share = afnb_share  # both read by _build_fusion, from APNBSegHead.__init__
        self.fusion_channels = fusion_channels
        super().__init__(input_transform="multiple_select", **kwargs)

    def _check_inputs(self, kwargs: dict) -> None:
        in_index = kwargs.get("in_index", -1)
        check_in_channels(type(self).__name__, kwargs.get("in_channels"), in_index)

    def _build_fusion(self, block: dict) -> None:
        low_channels, high_channels = self.in_channels
        if self.fusion_channels is None:
            self.fusion_channels = high_channels
        self.fusion = AFNB(
            low_channels, high_channels, self.fusion_channels, share=self.afnb_share, **block
        )

    def _bottleneck_in_channels(self) -> int:
        return self.fusion_channels

    def _forward_feature(self, inputs) -> torch.Tensor:
        low, high = self._transform_inputs(inputs)
        return self.context(self.bottleneck(self.fusion(low, high)))
