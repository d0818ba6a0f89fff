"""Non-local block (Wang, Girshick, Gupta, He; CVPR 2018) in its four pairwise forms.

    y_i = 1 / C(x) * sum_j f(x_i, x_j) g(x_j),        z_i = W_z y_i + x_i        (Eqs. 1, 6)

=================== =============================================== ========= ===================
mode                f(x_i, x_j)                                     C(x)      core (``attend``)
=================== =============================================== ========= ===================
gaussian            exp(s * x_i . x_j)                              sum_j f   softmax (SDPA)
embedded_gaussian   exp(s * theta(x_i) . phi(x_j))                  sum_j f   softmax (SDPA)
dot_product         theta(x_i) . phi(x_j)                           S         dot: theta (phi^T g)
concatenation       ReLU(w_f^T [theta(x_i), phi(x_j)])              S         concat: sort + sums
=================== =============================================== ========= ===================

``s`` is ``1 / sqrt(channels of the dot product)`` with ``use_scale`` and 1 without. ``S`` is
the number of anchors ``j``: ``N`` positions, or about ``N / 2**dims`` with ``sub_sample``. None
of the forms builds an N x S matrix with the default backend.
"""

from typing import Optional

import torch
import torch.nn as nn

from .asymmetric import check_channels
from .attention import BACKENDS, attend
from .conv import NormArg, check_choice, check_dims, check_positive, conv_nd, resolve_norm_layer
from .samplers import IdentitySampler, MaxPoolSampler

MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
_PAIRWISE = {
    "embedded_gaussian": "softmax",
    "gaussian": "softmax",
    "dot_product": "dot",
    "concatenation": "concat",
}


def _scalar_projection(x: torch.Tensor, conv: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """``w^T conv(x)`` for a 1x1 ``conv`` as one folded projection: ``(B, Cin, *S) -> (B, N)``.
    Costs ``Cin`` per position instead of ``Cin * C'``."""
    weight = w @ conv.weight.flatten(1)  # (Cin,)
    return torch.einsum("c,bcn->bn", weight, x.flatten(2)) + w @ conv.bias


class NonLocalBlock(nn.Module):
    """Non-local block ``z = W_z(y) + x`` for sequences, images or videos.

    Args:
        in_channels: channels ``C`` of ``x``.
        inter_channels: bottleneck channels ``C'`` of theta, phi and g; ``None`` is
            ``max(C // 2, 1)`` (the paper's halving).
        mode: ``'embedded_gaussian'`` (theta, phi, g: 1x1 convs with bias), ``'gaussian'``
            (theta = phi = identity on ``x``), ``'dot_product'`` or ``'concatenation'``
            (``w_f`` is ``concat_project``, a ``Conv2d(2C', 1, 1, bias=False)`` as in
            AlexHex7/mmcv, so their checkpoints load; it is applied split in halves,
            ``w_f^T [a, b] = w_theta^T a + w_phi^T b``, so no ``B x 2C' x N x S`` tensor exists).
        dims: 1 (``(B, C, L)``), 2 (``(B, C, H, W)``) or 3 (``(B, C, T, H, W)``).
        sub_sample: max-pool (kernel 2 on every spatial dim, ``ceil_mode``) after phi and g
            (``gaussian``: on the raw ``x`` used as phi); the pairwise work drops ~``2**dims``x.
            Unlike AlexHex7/mmcv (floor mode; time not pooled in 3-d), odd borders are kept.
        use_scale: divide the softmax logits by ``sqrt(C')`` (``sqrt(C)`` for ``gaussian``).
            Default ``True`` as mmcv/mmseg (the paper has no scale): unscaled logits of ``C'``
            channels saturate the softmax. mmcv never scales ``gaussian``; pass ``False`` to
            match it. Ignored by ``dot_product``/``concatenation`` (normalised by ``S``).
        norm_layer: norm after the ``W_z`` conv: ``'bn'`` (BatchNorm of ``dims``, the
            default) or ``channels -> nn.Module``; its weight and bias start at zero. ``None``:
            no norm, and the ``W_z`` conv (with bias) starts at zero. Either way a fresh block
            is the identity.
        backend: ``attend`` backend: ``'auto'``, ``'sdpa'`` or ``'explicit'`` (N x S matrix).

    Shape: ``(B, C, *spatial) -> (B, C, *spatial)``.
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: Optional[int] = None,
        mode: str = "embedded_gaussian",
        dims: int = 2,
        sub_sample: bool = False,
        use_scale: bool = True,
        norm_layer: NormArg = "bn",
        backend: str = "auto",
    ):
        super().__init__()
        check_positive(in_channels=in_channels)
        inter_channels = max(in_channels // 2, 1) if inter_channels is None else inter_channels
        check_positive(inter_channels=inter_channels)
        check_choice("mode", mode, MODES)
        check_choice("backend", backend, BACKENDS)
        if not isinstance(sub_sample, bool):
            raise ValueError(f"sub_sample must be a bool, got {sub_sample!r}")
        self.dims = check_dims(dims)
        self.in_channels = in_channels
        self.inter_channels = inter_channels
        self.mode = mode
        self.use_scale = use_scale
        self.backend = backend
        conv = conv_nd(dims)
        self.g = conv(in_channels, inter_channels, 1)
        self.theta = self.phi = None
        if mode != "gaussian":
            self.theta = conv(in_channels, inter_channels, 1)
            self.phi = conv(in_channels, inter_channels, 1)
        self.concat_project = None
        if mode == "concatenation":
            self.concat_project = nn.Conv2d(2 * inter_channels, 1, 1, bias=False)
        self.sampler = MaxPoolSampler(2) if sub_sample else IdentitySampler()

        norm_layer = resolve_norm_layer(norm_layer, dims)
        self.out_proj = conv(inter_channels, in_channels, 1, bias=norm_layer is None)
        self.out_norm = None if norm_layer is None else norm_layer(in_channels)
        zeroed = self.out_proj if self.out_norm is None else self.out_norm
        if getattr(zeroed, "weight", None) is None:
            raise ValueError(
                "norm_layer must have an affine weight (it is zero-initialised so "
                "that a fresh block is the identity)"
            )
        nn.init.zeros_(zeroed.weight)
        if getattr(zeroed, "bias", None) is not None:
            nn.init.zeros_(zeroed.bias)

    @property
    def scale(self) -> float:
        """Softmax logit scale ``s``."""
        channels = self.in_channels if self.mode == "gaussian" else self.inter_channels
        return channels**-0.5 if self.use_scale else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels("input", x, self.in_channels, self.dims, type(self).__name__)
        batch, spatial = x.shape[0], x.shape[2:]
        value = self.sampler(self.g(x))  # (B, C', S)
        if self.mode == "gaussian":
            query, key = x.flatten(2), self.sampler(x)  # (B, C, N), (B, C, S)
        elif self.mode == "concatenation":
            w_theta, w_phi = self.concat_project.weight.view(2, self.inter_channels)
            query = _scalar_projection(x, self.theta, w_theta)[:, None]  # a_i: (B, 1, N)
            if isinstance(self.sampler, IdentitySampler):
                key = _scalar_projection(x, self.phi, w_phi)[:, None]  # b_j: (B, 1, S)
            else:  # max pooling does not commute with w_phi
                key = torch.einsum("c,bcs->bs", w_phi, self.sampler(self.phi(x)))[:, None]
        else:
            query, key = self.theta(x).flatten(2), self.sampler(self.phi(x))
        y = attend(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            _PAIRWISE[self.mode],
            self.scale,
            self.backend,
        )  # (B, N, C')
        y = y.transpose(1, 2).reshape(batch, self.inter_channels, *spatial)
        z = self.out_proj(y)
        if self.out_norm is not None:
            z = self.out_norm(z)
        return z + x

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, dims={self.dims}, use_scale={self.use_scale}, "
            f"backend={self.backend!r}"
        )
