"""What APNB and AFNB share (Zhu et al., ICCV 2019, Sec. 3.3-3.4): the fusion of the
attention output with the query map, ``Y = dropout(act(norm(conv(fuse(W_o(O), X)))))``, and its
exact inference-time folding into two accumulating GEMMs (``AttentionFusionBlock.fold_``)."""

from typing import Optional, Sequence

import torch
import torch.nn as nn

from .asymmetric import AsymmetricAttention
from .conv import ActLayer, ConvNormAct, NormArg, batch_norm_affine, check_choice, check_dims
from .samplers import PyramidPoolingSampler

FUSION_MODES = ("concat", "add")
_DROPOUT = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}


def _affine_of_norm(norm: Optional[nn.Module], channels: int, like: torch.Tensor):
    """``(scale, shift)`` of an eval-mode BatchNorm (or of no norm)."""
    if norm is None or isinstance(norm, nn.Identity):
        return like.new_ones(channels), like.new_zeros(channels)
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.training:
        raise ValueError(
            f"fold_() needs an eval-mode BatchNorm after the fusion conv, got "
            f"{type(norm).__name__} (training={norm.training})"
        )
    return batch_norm_affine(norm)


class AttentionFusionBlock(nn.Module):
    """What APNB and AFNB share: ``Y = dropout(act(norm(conv(fuse(W_o(O), X)))))``, and its
    exact inference-time folding (``fold_``)."""

    attention: AsymmetricAttention
    fuse: nn.Module
    fusion: str
    folded: bool = False
    # the fast training mode's form of the same computation (see ``_factored_fusion``)
    factored_fusion: bool = False

    def _build(
        self,
        query_in_channels: int,
        kv_in_channels: int,
        out_channels: int,
        key_channels: int,
        value_channels: Optional[int],
        pool_sizes: Sequence[int],
        sampler: Optional[nn.Module],
        fusion: str,
        dropout: float,
        norm_layer: NormArg,
        act_layer: Optional[ActLayer],
        fuse_act_layer: Optional[ActLayer],
        dims: int,
        **attention_options,
    ) -> None:
        """The attention (``W_o`` to ``out_channels`` for concat, else to the query input's
        channels), the fusion conv + norm + ``fuse_act_layer``, and the dropout."""
        self.dims = check_dims(dims)
        check_choice("fusion", fusion, FUSION_MODES)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.fusion = fusion
        attention_out = out_channels if fusion == "concat" else query_in_channels
        self.attention = AsymmetricAttention(
            query_in_channels,
            kv_in_channels,
            key_channels,
            key_channels if value_channels is None else value_channels,
            attention_out,
            sampler=PyramidPoolingSampler(pool_sizes) if sampler is None else sampler,
            norm_layer=norm_layer,
            act_layer=act_layer,
            dims=dims,
            **attention_options,
        )
        fuse_in = attention_out + query_in_channels if fusion == "concat" else query_in_channels
        self.fuse = ConvNormAct(fuse_in, out_channels, 1, dims, norm_layer, fuse_act_layer)
        self.dropout = _DROPOUT[dims](dropout) if dropout > 0 else nn.Identity()

    def _fused_output(self, x: torch.Tensor, x_kv: Optional[torch.Tensor] = None):
        if self.folded:
            out = self.fuse(self.attention.tokens(x, x_kv), x)
        elif self.factored_fusion:
            out = self._factored_fusion(x, x_kv)
        else:
            context = self.attention(x, x_kv)
            fused = torch.cat([context, x], 1) if self.fusion == "concat" else x + context
            out = self.fuse(fused)
        return self.dropout(out)

    def _factored_fusion(self, x: torch.Tensor, x_kv: Optional[torch.Tensor] = None):
        """``fuse(W_o O, X)`` with the same parameters and math in fewer operations (training
        too): nothing lies between ``W_o`` and the fusion conv, so ``W_f [W_o O + b_o; X] =
        (W_fa W_o) O + W_fb X + W_fa b_o`` (``add``: ``W_fa = W_fb = W_f``). ``W_fa W_o`` is
        formed in the autograd graph once per call; the block skips ``W_o``'s output, the
        concatenation and the fusion GEMM's ``C_a`` columns: per position ``C_out (C_v + C_in)``
        multiply-adds instead of ``C_a C_v + C_out (C_a + C_in)``. Equal to the plain path up
        to float rounding; gradients reach ``W_o``, ``b_o`` and ``W_f``."""
        w_out, w_a, w_x = self._fusion_weights()
        bias = w_a @ self.attention.out_proj.bias
        if self.fuse.conv.bias is not None:
            bias = bias + self.fuse.conv.bias
        out = fused_linear(self.attention.tokens(x, x_kv), x, w_a @ w_out, w_x, bias)
        for name in ("norm", "act"):
            layer = getattr(self.fuse, name, None)
            if layer is not None:
                out = layer(out)
        return out

    def _fusion_weights(self):
        """``(W_o (C_a, C_v), W_fa (C_out, C_a), W_fb (C_out, C_in))``: the output projection
        and the fusion conv's columns that take its output and ``X`` (``add``: both ``W_f``)."""
        w_out = self.attention.out_proj.weight.flatten(1)
        w_fuse = self.fuse.conv.weight.flatten(1)
        w_a = w_fuse[:, : w_out.shape[0]]
        w_x = w_fuse[:, w_out.shape[0] :] if self.fusion == "concat" else w_fuse
        return w_out, w_a, w_x

    @torch.no_grad()
    def fold_(self) -> "AttentionFusionBlock":
        """For inference: merge ``W_o``, the fusion conv and its BatchNorm into one linear map
        of ``(O, X)`` (exact: no nonlinearity lies between them). ``concat``:
        ``BN(W_f [W_o O + b_o; X]) = (a W_fa W_o) O + (a W_fb) X + a (W_fa b_o) + c``; ``add``
        likewise with ``W_fa = W_fb = W_f``. Saves ``W_o``, shrinks the fusion GEMM from
        ``out + in`` to ``value + in`` input channels, and reads ``O`` in the attention's
        token layout (no concatenation, no transpose; see ``FoldedFusion``). Needs eval mode;
        irreversible."""
        if self.training:
            raise RuntimeError(f"{type(self).__name__}.fold_() is for inference: call eval() first")
        if self.folded:
            return self
        w_out, w_a, w_x = self._fusion_weights()
        b_fuse = self.fuse.conv.bias
        b_fuse = w_a.new_zeros(w_a.shape[0]) if b_fuse is None else b_fuse
        scale, shift = _affine_of_norm(getattr(self.fuse, "norm", None), w_a.shape[0], w_a)
        self.fuse = FoldedFusion(
            (w_a @ w_out) * scale[:, None],
            w_x * scale[:, None],
            (w_a @ self.attention.out_proj.bias + b_fuse) * scale + shift,
            getattr(self.fuse, "act", None),
        )
        self.attention.out_proj = None  # merged into it
        self.folded = True
        return self


class FoldedFusion(nn.Module):
    """A folded block's fusion: ``act(W_c O + W_x X + b)`` (see ``fold_``) by ``fused_linear``.
    Shapes: ``O (B, N, C_v)`` (token layout), ``X (B, C_in, *S)`` -> ``(B, C_out, *S)``."""

    def __init__(
        self,
        context_weight: torch.Tensor,
        input_weight: torch.Tensor,
        bias: torch.Tensor,
        act: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.context_weight = nn.Parameter(context_weight.detach().clone())  # (C_out, C_v)
        self.input_weight = nn.Parameter(input_weight.detach().clone())  # (C_out, C_in)
        self.bias = nn.Parameter(bias.detach().clone())  # (C_out,)
        self.act = nn.Identity() if act is None else act

    def forward(self, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.act(fused_linear(context, x, self.context_weight, self.input_weight, self.bias))

    def extra_repr(self) -> str:
        out_channels, value_channels = self.context_weight.shape
        return f"context={value_channels}, input={self.input_weight.shape[1]}, out={out_channels}"


def fused_linear(
    context: torch.Tensor,
    x: torch.Tensor,
    context_weight: torch.Tensor,
    input_weight: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """``W_c O + W_x X + b`` per position, as two accumulating GEMMs (no concatenation).

    ``context`` ``O`` in the attention's token layout ``(B, N, C_v)``, ``x`` ``(B, C_in, *S)``;
    ``context_weight (C_out, C_v)``, ``input_weight (C_out, C_in)``, ``bias (C_out,)``. With a
    channels-last ``x`` both are row-major ``(B N, C)`` matrices and the output is written
    channels-last; otherwise it is contiguous. Differentiable. Shape: ``-> (B, C_out, *S)``.
    """
    batch, channels, *spatial = x.shape
    out_channels = bias.shape[0]
    tokens = x.movedim(1, -1)
    if tokens.is_contiguous():  # channels-last: one GEMM over all B N positions
        out = torch.addmm(bias, tokens.reshape(-1, channels), input_weight.t())
        out = out.addmm_(
            context.reshape(-1, context.shape[-1]).to(out.dtype), context_weight.to(out.dtype).t()
        )
        return out.view(batch, *spatial, out_channels).movedim(-1, 1)
    out = torch.baddbmm(
        bias[:, None], input_weight.expand(batch, -1, -1), x.reshape(batch, channels, -1)
    )
    out = out.baddbmm_(
        context_weight.to(out.dtype).expand(batch, -1, -1), context.to(out.dtype).transpose(1, 2)
    )
    return out.view(batch, out_channels, *spatial)
