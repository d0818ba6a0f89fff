"""The non-local block family as plain PyTorch modules (no mmseg needed at call time)."""
from .afnb import AFNB
from .apnb import APNB
from .asymmetric import AsymmetricAttention
from .attention import attend
from .cgnl import CGNLBlock, cgnl_kernel
from .layers import ConvNormAct
from .non_local import NonLocalBlock
from .samplers import (
    IdentitySampler,
    MaxPoolSampler,
    PyramidPoolingSampler,
    adaptive_pool_matrix,
    build_sampler,
)

__all__ = [
    'AFNB', 'APNB', 'AsymmetricAttention', 'CGNLBlock', 'ConvNormAct', 'IdentitySampler',
    'MaxPoolSampler', 'NonLocalBlock', 'PyramidPoolingSampler', 'adaptive_pool_matrix', 'attend',
    'build_sampler', 'cgnl_kernel',
]
