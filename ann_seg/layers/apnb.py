"""Asymmetric Pyramid Non-local Block (Zhu et al., ICCV 2019, Sec. 3.3)."""

from typing import Optional, Sequence

import torch
import torch.nn as nn

from .asymmetric import check_channels
from .conv import ActLayer, NormArg, check_positive
from .fusion import AttentionFusionBlock


class APNB(AttentionFusionBlock):
    """Self-attention of every position to S pyramid-pooled anchors of the same map.

    ``Y = fuse(W_o(O), X)`` with ``O = softmax(theta(X)^T P(phi(X)) / sqrt(C')) P(g(X))`` and
    ``P`` pyramid pooling to ``pool_sizes`` (``(1, 3, 6, 8)``: S = 110 anchors). Fusion
    ``'concat'`` is the paper's ``conv1x1(cat(W_o(O), X))``; ``'add'`` is ``conv1x1(X + W_o(O))``;
    both followed by norm, act and dropout. Cost O(C' N S) instead of the non-local O(C' N^2).

    Args:
        in_channels: channels C of ``X``.
        out_channels: channels of ``Y``.
        key_channels: C' of the query/key projection (256 in the paper).
        value_channels: channels of the value projection (defaults to ``key_channels``).
        pool_sizes: pyramid bins per level.
        share: ``'query_key'`` (released code: theta is phi; the default), ``'key_value'``
            (the paper's Fig. 3: g is phi) or ``'none'``.
        fusion: ``'concat'`` or ``'add'``.
        dropout: dropout after fusion (0.05 in the released code).
        norm_layer: ``'bn'`` (BatchNorm of ``dims``), ``C -> nn.Module`` or ``None`` (see
            ``conv``); act_layer: ``() -> nn.Module`` or ``None``.
        sampler: replaces the pyramid sampler (e.g. ``IdentitySampler()`` gives a full
            non-local block).
        dims: 1, 2 or 3 spatial dims. backend: see ``attend``.

    Shape: ``(B, in_channels, *S) -> (B, out_channels, *S)`` for any spatial size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        key_channels: int = 256,
        value_channels: Optional[int] = None,
        pool_sizes: Sequence[int] = (1, 3, 6, 8),
        share: str = "query_key",
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
            in_channels=in_channels, out_channels=out_channels, key_channels=key_channels
        )
        self.in_channels = in_channels
        self._build(
            in_channels,
            in_channels,
            out_channels,
            key_channels,
            value_channels,
            pool_sizes,
            sampler,
            fusion,
            dropout,
            norm_layer,
            act_layer,
            fuse_act_layer=act_layer,
            dims=dims,
            share=share,
            backend=backend,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels("input", x, self.in_channels, self.dims, type(self).__name__)
        return self._fused_output(x)
