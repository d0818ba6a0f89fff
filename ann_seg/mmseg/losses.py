"""Class-weighted cross-entropy that handles ignored pixels.

mmseg 1.2.2's ``CrossEntropyLoss`` with ``class_weight`` indexes the weights with every label,
ignored ones included, and fails (``IndexError: index 255 is out of bounds``) as soon as a label
map holds ignore pixels or padding (mmseg #3734, #3831). ``WeightedCrossEntropyLoss`` computes
PyTorch's weighted mean over the pixels that are not ignored:
``sum_i w[y_i] * -log p_i[y_i] / sum_i w[y_i]``.
"""

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS

_EPS = torch.finfo(torch.float32).eps


@MODELS.register_module()
class WeightedCrossEntropyLoss(nn.Module):
    """Softmax cross-entropy, optionally class-weighted, averaged over non-ignored pixels.

    Args:
        class_weight: one weight per class, or None (all 1).
        loss_weight: factor on the loss.
        reduction: ``'mean'`` (weighted mean over non-ignored pixels), ``'sum'`` or ``'none'``.
        loss_name: the log key; must start with ``loss_`` to be back-propagated.
        use_sigmoid: must be False; accepted so that a ``CrossEntropyLoss`` dict (a base
            config's) becomes this loss by its ``type`` alone.

    ``forward(cls_score (N, C, H, W), label (N, H, W), weight=None, avg_factor=None,
    reduction_override=None, ignore_index=255)`` as mmseg's losses; ``weight`` is a per-pixel
    factor on the numerator. Labels outside ``0..C-1`` that are not ``ignore_index`` raise a
    ``ValueError`` naming them. All pixels ignored: the loss is 0. No state (checkpoints stay
    interchangeable with ``CrossEntropyLoss``)."""

    def __init__(
        self,
        class_weight: Optional[Sequence[float]] = None,
        loss_weight: float = 1.0,
        reduction: str = "mean",
        loss_name: str = "loss_ce",
        use_sigmoid: bool = False,
    ):
        super().__init__()
        if use_sigmoid:
            raise ValueError(
                "WeightedCrossEntropyLoss is a softmax loss: use_sigmoid must be False"
            )
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(
                f"WeightedCrossEntropyLoss: reduction must be mean, sum or none, got {reduction!r}"
            )
        if class_weight is not None and (
            len(class_weight) == 0 or any(float(w) < 0 for w in class_weight)
        ):
            raise ValueError(
                f"WeightedCrossEntropyLoss: class_weight must be non-negative, got {class_weight}"
            )
        self.class_weight = None if class_weight is None else [float(w) for w in class_weight]
        self.loss_weight = loss_weight
        self.reduction = reduction
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def extra_repr(self) -> str:
        return f"class_weight={self.class_weight}, reduction={self.reduction!r}"

    def forward(
        self,
        cls_score: torch.Tensor,
        label: torch.Tensor,
        weight: Optional[torch.Tensor] = None,
        avg_factor: Optional[float] = None,
        reduction_override: Optional[str] = None,
        ignore_index: int = 255,
        **kwargs,
    ) -> torch.Tensor:
        reduction = reduction_override or self.reduction
        num_classes = cls_score.shape[1]
        valid = label != ignore_index
        bad = label[valid & ((label < 0) | (label >= num_classes))]
        if bad.numel():
            raise ValueError(
                f"WeightedCrossEntropyLoss: label values {bad.unique()[:10].tolist()} outside "
                f"the classes 0..{num_classes - 1} and ignore_index {ignore_index}"
            )
        class_weight = None
        if self.class_weight is not None:
            if len(self.class_weight) != num_classes:
                raise ValueError(
                    f"WeightedCrossEntropyLoss: {len(self.class_weight)} class weights "
                    f"{self.class_weight} for {num_classes} classes"
                )
            class_weight = cls_score.new_tensor(self.class_weight)
        # per pixel: w[y] * -log p[y], 0 where ignored
        loss = F.cross_entropy(
            cls_score, label, weight=class_weight, reduction="none", ignore_index=ignore_index
        )
        if weight is not None:
            loss = loss * weight.to(loss.dtype)
        if reduction == "none":
            return self.loss_weight * loss
        if reduction == "sum":
            return self.loss_weight * loss.sum()
        if avg_factor is None:
            target = torch.where(valid, label, torch.zeros_like(label))
            pixel_weight = valid.to(loss.dtype)
            if class_weight is not None:
                pixel_weight = class_weight[target] * pixel_weight
            avg_factor = pixel_weight.sum()
        denominator = torch.as_tensor(avg_factor, dtype=loss.dtype, device=loss.device)
        return self.loss_weight * loss.sum() / denominator.clamp_min(_EPS)
