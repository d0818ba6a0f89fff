"""Exact activation checkpointing (``torch.utils.checkpoint``, non-reentrant): a module's forward
keeps only its inputs and recomputes its activations in the backward pass, computing what the
plain module computes: the recomputation replays the forward's random state (same dropout
masks), and training-mode BatchNorms update their running statistics once per step (a plain
``checkpoint``, mmseg's ``with_cp`` included, updates them twice). In eval mode or under
``no_grad`` the module runs unchanged. The switch is per instance; parameters, buffers and
state dict do not change.
"""

import contextlib
import types
from typing import Iterator, List

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def frozen_batch_norm_statistics(module: nn.Module) -> Iterator[List[nn.Module]]:
    """Inside: the training-mode BatchNorms of ``module`` normalise with batch statistics but
    leave their running statistics as they were: momentum 0 (the autograd graph then saves the
    same tensors as with tracking, as the checkpoint's recomputation check requires), and the
    batch count restored on exit."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield norms
    finally:
        for norm, (momentum, count) in zip(norms, saved):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(count)


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    forward = type(self).forward
    if not (self.training and torch.is_grad_enabled()):
        return forward(self, *args, **kwargs)

    def contexts():
        return contextlib.nullcontext(), frozen_batch_norm_statistics(self)

    return checkpoint(forward, self, *args, use_reentrant=False, context_fn=contexts, **kwargs)


def set_activation_checkpointing(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Checkpoint ``module``'s forward (its class's ``forward``) while training, exactly (see
    the module docstring); ``enabled=False`` restores the plain forward. Returns ``module``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
    if enabled:
        module.forward = types.MethodType(_checkpointed_forward, module)
    else:
        module.__dict__.pop("forward", None)
    return module


def is_activation_checkpointed(module: nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _checkpointed_forward
