"""Asymmetric attention: queries at every position of one map, keys and values at S anchors
sampled from another (or the same) map. The module behind APNB, AFNB and the non-local block.

    O = W_o( attend( theta(X_q), P(phi(X_kv)), P(g(X_kv)) ) )          (ANN, Eqs. 1-5)

``theta``/``phi`` are 1x1 conv (+ norm + act), ``g`` a 1x1 conv, ``P`` a sampler (pyramid
pooling, max pooling or identity), ``W_o`` a 1x1 conv. With ``P`` the identity this is the
non-local block's attention; with pyramid pooling it costs O(C' N S) instead of O(C' N^2).
"""

from typing import Optional

import torch
import torch.nn as nn

from .attention import BACKENDS, PAIRWISE, attend
from .conv import ActLayer, ConvNormAct, NormArg, check_choice, check_dims, check_positive, conv_nd
from .samplers import build_sampler

SHARE_MODES = ("none", "query_key", "key_value")


def check_channels(name: str, tensor: torch.Tensor, expected: int, dims: int, owner: str):
    if tensor.dim() != dims + 2 or tensor.shape[1] != expected:
        raise ValueError(
            f"{owner}: expected {name} of shape (B, {expected}, "
            f"{', '.join(['*'] * dims)}) as set by its in_channels argument, "
            f"got {tuple(tensor.shape)}"
        )


class AsymmetricAttention(nn.Module):
    """Attention from ``query_in`` positions to anchors sampled from ``kv_in``.

    Args:
        query_in_channels: channels of the query input ``X_q``.
        kv_in_channels: channels of the key/value input ``X_kv``.
        key_channels: channels ``C'`` of theta and phi.
        value_channels: channels of g.
        out_channels: channels of ``W_o``'s output.
        sampler: anchor sampler (see ``build_sampler``); ``None`` is the identity.
        share: ``'query_key'`` (one projection for theta and phi; needs ``X_q is X_kv``),
            ``'key_value'`` (g is phi; needs ``value_channels == key_channels``) or ``'none'``.
        pairwise: ``'softmax'`` or ``'dot'`` (see ``attend``).
        scale: softmax logit scale, ``None`` for ``key_channels ** -0.5``.
        norm_layer, act_layer: for theta and phi (BatchNorm + ReLU by default, as released;
            ``None`` drops them: plain 1x1 conv).
        zero_init_out: initialise ``W_o`` to zero, so the block first adds nothing.
        dims: 1, 2 or 3 spatial dims.
        backend: attention backend (``'auto'``, ``'sdpa'``, ``'explicit'``).

    Shapes: ``x_q (B, Cq, *Sq)``, ``x_kv (B, Ckv, *Skv)`` -> ``(B, out_channels, *Sq)``.
    """

    def __init__(
        self,
        query_in_channels: int,
        kv_in_channels: int,
        key_channels: int,
        value_channels: int,
        out_channels: int,
        sampler=None,
        share: str = "none",
        pairwise: str = "softmax",
        scale: Optional[float] = None,
        norm_layer: NormArg = "bn",
        act_layer: Optional[ActLayer] = nn.ReLU,
        zero_init_out: bool = True,
        dims: int = 2,
        backend: str = "auto",
    ):
        super().__init__()
        check_positive(
            query_in_channels=query_in_channels,
            kv_in_channels=kv_in_channels,
            key_channels=key_channels,
            value_channels=value_channels,
            out_channels=out_channels,
        )
        check_choice("share", share, SHARE_MODES)
        check_choice("backend", backend, BACKENDS)
        if share == "query_key" and query_in_channels != kv_in_channels:
            raise ValueError(
                'share="query_key" needs query_in_channels == kv_in_channels, got '
                f"{query_in_channels} and {kv_in_channels}"
            )
        if share == "key_value" and value_channels != key_channels:
            raise ValueError(
                'share="key_value" needs value_channels == key_channels, got '
                f"{value_channels} and {key_channels}"
            )
        if pairwise not in ("softmax", "dot"):
            raise ValueError(
                f'pairwise must be "softmax" or "dot" here, got {pairwise!r} '
                f"(all forms: {PAIRWISE})"
            )
        self.dims = check_dims(dims)
        self.share = share
        self.pairwise = pairwise
        self.scale = scale
        self.backend = backend
        self.query_in_channels = query_in_channels
        self.kv_in_channels = kv_in_channels
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.sampler = build_sampler(sampler)
        self.key_proj = ConvNormAct(kv_in_channels, key_channels, 1, dims, norm_layer, act_layer)
        self.query_proj = (
            None
            if share == "query_key"
            else ConvNormAct(query_in_channels, key_channels, 1, dims, norm_layer, act_layer)
        )
        conv = conv_nd(dims)
        self.value_proj = None if share == "key_value" else conv(kv_in_channels, value_channels, 1)
        self.out_proj = conv(value_channels, out_channels, 1)
        if zero_init_out:
            nn.init.zeros_(self.out_proj.weight)
            nn.init.zeros_(self.out_proj.bias)

    def _as_nd(self, anchors: torch.Tensor) -> torch.Tensor:
        """``(B, C, S)`` -> ``(B, C, S, 1, ...)`` so N-d 1x1 convs apply to anchors."""
        return anchors.reshape(anchors.shape + (1,) * (self.dims - 1))

    def forward(self, x_q: torch.Tensor, x_kv: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.out_proj is None:
            raise RuntimeError(
                "W_o was folded into the block's fusion conv (fold_()); call context() instead"
            )
        return self.out_proj(self.context(x_q, x_kv))

    def context(self, x_q: torch.Tensor, x_kv: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attention output ``O`` before ``W_o``: ``(B, value_channels, *Sq)``."""
        tokens = self.tokens(x_q, x_kv)
        return tokens.transpose(1, 2).reshape(x_q.shape[0], self.value_channels, *x_q.shape[2:])

    def tokens(self, x_q: torch.Tensor, x_kv: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``O`` in token layout, as the attention computes it: ``(B, N_q, value_channels)``."""
        owner = type(self).__name__
        check_channels("query input", x_q, self.query_in_channels, self.dims, owner)
        if x_kv is None:
            x_kv = x_q
        else:
            check_channels("key/value input", x_kv, self.kv_in_channels, self.dims, owner)
            if self.share == "query_key" and x_kv is not x_q:
                raise ValueError(
                    f'{owner}: share="query_key" is self-attention; pass a single input'
                )
        key_map = self.key_proj(x_kv)
        query = key_map if self.query_proj is None else self.query_proj(x_q)
        key = self.sampler(key_map)
        if self.value_proj is None:
            value = key
        elif self.sampler.linear:
            # sampling is an average (rows sum to 1), so it commutes with the affine 1x1 conv:
            # project S anchors instead of N positions
            value = self.value_proj(self._as_nd(self.sampler(x_kv))).flatten(2)
        else:
            value = self.sampler(self.value_proj(x_kv))
        return attend(
            query.flatten(2).transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            self.pairwise,
            self.scale,
            self.backend,
        )
