"""Asymmetric Pyramid Non-local Block (Zhu et al., ICCV 2019, Sec. 3.3)."""
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .asymmetric import AsymmetricAttention, check_channels
from .layers import (
    ActLayer,
    ConvNormAct,
    NormLayer,
    batch_norm_affine,
    batch_norm_nd,
    check_dims,
    check_positive,
)
from .samplers import PyramidPoolingSampler

FUSION_MODES = ('concat', 'add')
_DROPOUT = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}


def check_fusion(fusion: str) -> str:
    if fusion not in FUSION_MODES:
        raise ValueError(f'fusion must be one of {FUSION_MODES}, got {fusion!r}')
    return fusion


def dropout_nd(p: float, dims: int) -> nn.Module:
    if not 0 <= p < 1:
        raise ValueError(f'dropout must be in [0, 1), got {p!r}')
    return _DROPOUT[dims](p) if p > 0 else nn.Identity()


def pyramid_sampler(pool_sizes: Sequence[int], sampler) -> nn.Module:
    return PyramidPoolingSampler(pool_sizes) if sampler is None else sampler


def _affine_of_norm(norm: Optional[nn.Module], channels: int, like: torch.Tensor):
    """``(scale, shift)`` of an eval-mode BatchNorm (or of no norm)."""
    if norm is None or isinstance(norm, nn.Identity):
        return like.new_ones(channels), like.new_zeros(channels)
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.training:
        raise ValueError(f'fold_() needs an eval-mode BatchNorm after the fusion conv, got '
                         f'{type(norm).__name__} (training={norm.training})')
    return batch_norm_affine(norm)


class AttentionFusionBlock(nn.Module):
    """What APNB and AFNB share: ``Y = dropout(act(norm(conv(fuse(W_o(O), X)))))``, and its
    exact inference-time folding (``fold_``)."""

    attention: AsymmetricAttention
    fuse: nn.Module
    fusion: str
    folded: bool = False

    def _fused_output(self, x: torch.Tensor, x_kv: Optional[torch.Tensor] = None):
        if self.folded:
            out = self.fuse(torch.cat([self.attention.context(x, x_kv), x], 1))
        else:
            context = self.attention(x, x_kv)
            fused = torch.cat([context, x], 1) if self.fusion == 'concat' else x + context
            out = self.fuse(fused)
        return self.dropout(out)

    @torch.no_grad()
    def fold_(self) -> 'AttentionFusionBlock':
        """For inference: merge ``W_o``, the fusion conv and its BatchNorm into one 1x1 conv
        over ``cat(O, X)`` (exact: no nonlinearity lies between them). ``concat``:
        ``BN(W_f [W_o O + b_o; X]) = (a W_fa W_o) O + (a W_fb) X + a (W_fa b_o) + c``; ``add``
        likewise with ``W_fa = W_fb = W_f``. Saves ``W_o`` and shrinks the fusion GEMM from
        ``out + in`` to ``value + in`` input channels. Needs eval mode; irreversible."""
        if self.training:
            raise RuntimeError(f'{type(self).__name__}.fold_() is for inference: call eval() first')
        if self.folded:
            return self
        w_out = self.attention.out_proj.weight.flatten(1)  # (attn_out, value)
        b_out = self.attention.out_proj.bias
        conv = self.fuse.conv
        w_fuse = conv.weight.flatten(1)  # (out, fuse_in)
        b_fuse = conv.bias if conv.bias is not None else w_fuse.new_zeros(w_fuse.shape[0])
        scale, shift = _affine_of_norm(getattr(self.fuse, 'norm', None), w_fuse.shape[0], w_fuse)
        attn_out = w_out.shape[0]
        w_a = w_fuse[:, :attn_out]
        w_x = w_fuse[:, attn_out:] if self.fusion == 'concat' else w_fuse
        weight = torch.cat([w_a @ w_out, w_x], 1) * scale[:, None]
        bias = (w_a @ b_out + b_fuse) * scale + shift
        folded = type(conv)(weight.shape[1], weight.shape[0], 1, bias=True)
        folded.weight.copy_(weight.reshape(folded.weight.shape))
        folded.bias.copy_(bias)
        folded = folded.to(device=w_fuse.device, dtype=w_fuse.dtype)
        act = [self.fuse.act] if hasattr(self.fuse, 'act') else []
        self.fuse = nn.Sequential(folded, *act)  # the merged conv (+ act) replaces conv + norm
        self.attention.out_proj = None           # merged into it
        self.folded = True
        return self


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
        norm_layer: ``C -> nn.Module`` (default BatchNorm of ``dims``); act_layer: ``() -> Module``.
        sampler: replaces the pyramid sampler (e.g. ``IdentitySampler()`` gives a full
            non-local block).
        dims: 1, 2 or 3 spatial dims. backend: see ``attend``.

    Shape: ``(B, in_channels, *S) -> (B, out_channels, *S)`` for any spatial size.
    """

    def __init__(self, in_channels: int, out_channels: int, key_channels: int = 256,
                 value_channels: Optional[int] = None,
                 pool_sizes: Sequence[int] = (1, 3, 6, 8), share: str = 'query_key',
                 fusion: str = 'concat', dropout: float = 0.05,
                 norm_layer: Optional[NormLayer] = None, act_layer: Optional[ActLayer] = nn.ReLU,
                 sampler: Optional[nn.Module] = None, dims: int = 2, backend: str = 'auto'):
        super().__init__()
        check_dims(dims)
        check_positive('in_channels', in_channels)
        check_positive('out_channels', out_channels)
        check_positive('key_channels', key_channels)
        value_channels = key_channels if value_channels is None else value_channels
        check_positive('value_channels', value_channels)
        norm_layer = batch_norm_nd(dims) if norm_layer is None else norm_layer
        self.in_channels = in_channels
        self.fusion = check_fusion(fusion)
        self.dims = dims
        attention_out = out_channels if fusion == 'concat' else in_channels
        self.attention = AsymmetricAttention(
            in_channels, in_channels, key_channels, value_channels, attention_out,
            sampler=pyramid_sampler(pool_sizes, sampler), share=share, norm_layer=norm_layer,
            act_layer=act_layer, dims=dims, backend=backend)
        fuse_in = attention_out + in_channels if fusion == 'concat' else in_channels
        self.fuse = ConvNormAct(fuse_in, out_channels, 1, dims, norm_layer, act_layer)
        self.dropout = dropout_nd(dropout, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels('input', x, self.in_channels, self.dims, type(self).__name__)
        return self._fused_output(x)
