"""Exact activation checkpointing of a module: its forward keeps only its inputs and recomputes
its activations in the backward pass (``torch.utils.checkpoint``, non-reentrant).

"Exact" means that a checkpointed module computes what the plain one computes, step for step:

* the recomputation runs with the random-number state of the forward (dropout draws the same
  masks; ``preserve_rng_state``);
* training-mode BatchNorms inside update their running statistics once per step, in the
  forward: during the recomputation they normalise with the batch statistics as before but
  leave the statistics unchanged (a plain ``checkpoint`` of a block with BatchNorm, mmseg's
  ``with_cp`` included, applies the momentum update twice per step);
* in eval mode or under ``no_grad`` the module runs unchanged (nothing to save).

The switch is per instance (``set_activation_checkpointing``): the module's parameters, buffers
and state dict do not change, so checkpoints load into a module without it.
"""

import contextlib
import types
from typing import Iterator, List

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def frozen_batch_norm_statistics(module: nn.Module) -> Iterator[List[nn.Module]]:
    """Inside: the training-mode BatchNorms of ``module`` normalise with batch statistics as
    always but leave ``running_mean``, ``running_var`` and ``num_batches_tracked`` as they
    were: their momentum is 0 (the kernel's update ``(1 - 0) r + 0 m`` rewrites the same
    values; the autograd graph saves the same tensors as with tracking, which the
    checkpoint's recomputation check requires) and the batch count is restored on exit."""
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
