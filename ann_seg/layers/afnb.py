"""Asymmetric Fusion Non-local Block (Zhu et al., ICCV 2019, Sec. 3.4)."""

from typing import Optional, Sequence

import torch
import torch.nn as nn

from .asymmetric import check_channels
from .conv import ActLayer, NormArg, check_positive
from .fusion import AttentionFusionBlock


class AFNB(AttentionFusionBlock):
    """Cross-level attention: queries from the high-level map ``X_h`` (stage 5), keys and
    values from S pyramid-pooled anchors of the low-level map ``X_l`` (stage 4).

    ``Y = fuse(W_o(O), X_h)`` with ``O = softmax(theta(X_h)^T P(phi(X_l)) / sqrt(C')) P(g(X_l))``.
    Fusion ``'concat'``: ``norm(conv1x1(cat(W_o(O), X_h)))`` (no activation, as released);
    ``'add'``: ``norm(conv1x1(X_h + W_o(O)))``; then dropout.

    Args:
        low_in_channels: channels of ``X_l`` (1024 for ResNet stage 4).
        high_in_channels: channels of ``X_h`` (2048 for ResNet stage 5).
        out_channels: channels of ``Y`` (2048 in the released model).
        key_channels, value_channels: C' of theta/phi and of g (256, 256).
        pool_sizes: pyramid bins (S = 110 for ``(1, 3, 6, 8)``).
        share: ``'none'`` (released) or ``'key_value'``; queries come from another map, so
            ``'query_key'`` is not available.
        fusion, dropout, norm_layer, act_layer, sampler, dims, backend: as in ``APNB``;
            ``act_layer`` applies to theta and phi only.

    Shapes: ``x_low (B, low_in_channels, *Sl)``, ``x_high (B, high_in_channels, *Sh)`` ->
    ``(B, out_channels, *Sh)``; ``Sl`` and ``Sh`` may differ.
    """

    def __init__(
        self,
        low_in_channels: int,
        high_in_channels: int,
        out_channels: int,
        key_channels: int = 256,
        value_channels: Optional[int] = None,
        pool_sizes: Sequence[int] = (1, 3, 6, 8),
        share: str = "none",
        fusion: str = "concat",
        dropout: float = 0.05,
        norm_layer: NormArg = "bn",
        act_layer: Optional[ActLayer] = nn.ReLU,
        sampler: Optional[nn.Module] = None,
        dims: int = 2,
        backend: str = "auto",
    ):
        super().__init__()
        check_positive(
            low_in_channels=low_in_channels,
            high_in_channels=high_in_channels,
            out_channels=out_channels,
            key_channels=key_channels,
        )
        if share == "query_key":
            raise ValueError(
                'AFNB: share="query_key" is impossible, queries and keys come from '
                'different inputs; use "none" or "key_value"'
            )
        self.low_in_channels = low_in_channels
        self.high_in_channels = high_in_channels
        self._build(
            high_in_channels,
            low_in_channels,
            out_channels,
            key_channels,
            value_channels,
            pool_sizes,
            sampler,
            fusion,
            dropout,
            norm_layer,
            act_layer,
            fuse_act_layer=None,  # no activation after the fusion, as released
            dims=dims,
            share=share,
            backend=backend,
        )

    def forward(self, x_low: torch.Tensor, x_high: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        check_channels("x_low", x_low, self.low_in_channels, self.dims, owner)
        check_channels("x_high", x_high, self.high_in_channels, self.dims, owner)
        return self._fused_output(x_high, x_low)
