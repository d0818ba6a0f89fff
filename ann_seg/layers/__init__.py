"""The non-local block family and its pieces, in plain PyTorch (import-linter enforces it);
see docs/blocks.md."""

from .afnb import AFNB
from .apnb import APNB
from .asymmetric import AsymmetricAttention
from .attention import attend
from .cgnl import CGNLBlock, cgnl_kernel
from .checkpointing import is_activation_checkpointed, set_activation_checkpointing
from .conv import ConvNormAct
from .fold import fold_attention_blocks, fold_batch_norms, fold_conv_bn, fuse_for_inference
from .fusion import AttentionFusionBlock, FoldedFusion
from .non_local import NonLocalBlock
from .samplers import (
    IdentitySampler,
    MaxPoolSampler,
    PyramidPoolingSampler,
    adaptive_pool_matrix,
    build_sampler,
)

__all__ = [
    "AFNB",
    "APNB",
    "AsymmetricAttention",
    "AttentionFusionBlock",
    "CGNLBlock",
    "ConvNormAct",
    "FoldedFusion",
    "IdentitySampler",
    "MaxPoolSampler",
    "NonLocalBlock",
    "PyramidPoolingSampler",
    "adaptive_pool_matrix",
    "attend",
    "build_sampler",
    "cgnl_kernel",
    "fold_attention_blocks",
    "fold_batch_norms",
    "fold_conv_bn",
    "fuse_for_inference",
    "is_activation_checkpointed",
    "set_activation_checkpointing",
]
