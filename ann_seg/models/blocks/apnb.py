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
            out = self.fuse(self.attention.tokens(x, x_kv), x)
        else:
            context = self.attention(x, x_kv)
            fused = torch.cat([context, x], 1) if self.fusion == 'concat' else x + context
            out = self.fuse(fused)
        return self.dropout(out)

    @torch.no_grad()
    def fold_(self) -> 'AttentionFusionBlock':
        """For inference: merge ``W_o``, the fusion conv and its BatchNorm into one linear map
        of ``(O, X)`` (exact: no nonlinearity lies between them). ``concat``:
        ``BN(W_f [W_o O + b_o; X]) = (a W_fa W_o) O + (a W_fb) X + a (W_fa b_o) + c``; ``add``
        likewise with ``W_fa = W_fb = W_f``. Saves ``W_o``, shrinks the fusion GEMM from
        ``out + in`` to ``value + in`` input channels, and reads ``O`` in the attention's
        token layout (no concatenation, no transpose; see ``FoldedFusion``). Needs eval mode;
        irreversible."""
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
        self.fuse = FoldedFusion((w_a @ w_out) * scale[:, None], w_x * scale[:, None],
                                 (w_a @ b_out + b_fuse) * scale + shift,
                                 getattr(self.fuse, 'act', None))
        self.attention.out_proj = None  # merged into it
        self.folded = True
        return self


class FoldedFusion(nn.Module):
    """A folded block's fusion: ``act(W_c O + W_x X + b)`` (see ``fold_``), as two
    accumulating GEMMs per batch, with no concatenation.

    ``O`` comes in the attention's token layout ``(B, N, C_v)``; ``X`` is ``(B, C_in, *S)``.
    With a channels-last ``X`` both are row-major ``(B N, C)`` matrices and the output is
    written channels-last; otherwise it is contiguous. Shape: ``-> (B, C_out, *S)``.
    """

    def __init__(self, context_weight: torch.Tensor, input_weight: torch.Tensor,
                 bias: torch.Tensor, act: Optional[nn.Module] = None):
        super().__init__()
        self.context_weight = nn.Parameter(context_weight.detach().clone())  # (C_out, C_v)
        self.input_weight = nn.Parameter(input_weight.detach().clone())      # (C_out, C_in)
        self.bias = nn.Parameter(bias.detach().clone())                      # (C_out,)
        self.act = nn.Identity() if act is None else act

    def forward(self, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        batch, channels, *spatial = x.shape
        out_channels = self.bias.shape[0]
        tokens = x.movedim(1, -1)
        if tokens.is_contiguous():  # channels-last: one GEMM over all B N positions
            out = torch.addmm(self.bias, tokens.reshape(-1, channels), self.input_weight.t())
            out = out.addmm_(context.reshape(-1, context.shape[-1]).to(out.dtype),
                             self.context_weight.to(out.dtype).t())
            out = out.view(batch, *spatial, out_channels).movedim(-1, 1)
        else:
            out = torch.baddbmm(self.bias[:, None], self.input_weight.expand(batch, -1, -1),
                                x.reshape(batch, channels, -1))
            out = out.baddbmm_(self.context_weight.to(out.dtype).expand(batch, -1, -1),
                               context.to(out.dtype).transpose(1, 2))
            out = out.view(batch, out_channels, *spatial)
        return self.act(out)

    def extra_repr(self) -> str:
        out_channels, value_channels = self.context_weight.shape
        return (f'context={value_channels}, input={self.input_weight.shape[1]}, '
                f'out={out_channels}')


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
