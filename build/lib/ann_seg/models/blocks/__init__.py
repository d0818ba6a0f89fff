"""Deprecated (0.1 layout), kept for one release: the blocks live in ``ann_seg.layers``."""

from ann_seg.layers import (  # noqa: F401
    AFNB,
    APNB,
    AsymmetricAttention,
    CGNLBlock,
    ConvNormAct,
    IdentitySampler,
    MaxPoolSampler,
    NonLocalBlock,
    PyramidPoolingSampler,
    adaptive_pool_matrix,
    attend,
    build_sampler,
    cgnl_kernel,
)
