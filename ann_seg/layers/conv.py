"""Small building pieces shared by the blocks: N-d conv/norm/act and their defaults.

One convention for every block's ``norm_layer`` argument (``NormArg``): ``'bn'`` (the
default) is BatchNorm of the block's ``dims``; a callable ``channels -> nn.Module`` builds any
other norm; ``None`` means no norm. ``act_layer`` is a callable ``() -> nn.Module`` or ``None``.
"""

from typing import Callable, Optional, Union

import torch.nn as nn

NormLayer = Callable[[int], nn.Module]
NormArg = Union[str, NormLayer, None]
ActLayer = Callable[[], nn.Module]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAX_POOL = {1: nn.functional.max_pool1d, 2: nn.functional.max_pool2d, 3: nn.functional.max_pool3d}


def check_dims(dims: int) -> int:
    if dims not in _CONV:
        raise ValueError(f"dims must be 1, 2 or 3 (sequence, image, video), got {dims!r}")
    return dims


def check_positive(**values) -> None:
    """Refuse any of the named ``values`` that is not a positive int."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def conv_nd(dims: int) -> type:
    return _CONV[check_dims(dims)]


def batch_norm_nd(dims: int) -> type:
    return _BATCH_NORM[check_dims(dims)]


def max_pool_nd(dims: int) -> Callable:
    return _MAX_POOL[check_dims(dims)]


def resolve_norm_layer(norm_layer: NormArg, dims: int) -> Optional[NormLayer]:
    """``'bn'`` -> BatchNorm of ``dims``; a callable stays; ``None`` stays (no norm)."""
    if norm_layer == "bn":
        return batch_norm_nd(dims)
    if norm_layer is not None and not callable(norm_layer):
        raise ValueError(f'norm_layer must be "bn", a callable or None, got {norm_layer!r}')
    return norm_layer


class ConvNormAct(nn.Sequential):
    """``conv -> norm -> act`` with a kernel-size ``k`` N-d convolution ("same" padding).

    The conv has a bias only when no norm follows it. ``norm_layer``/``act_layer`` of ``None``
    drop the piece (``norm_layer`` as in the module docstring). Submodules are named ``conv``,
    ``norm``, ``act``. Shape: ``(B, in_channels, *S) -> (B, out_channels, *S)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        dims: int = 2,
        norm_layer: NormArg = "bn",
        act_layer: Optional[ActLayer] = nn.ReLU,
        dilation: int = 1,
    ):
        super().__init__()
        check_positive(in_channels=in_channels, out_channels=out_channels)
        norm_layer = resolve_norm_layer(norm_layer, dims)
        padding = dilation * (kernel_size - 1) // 2
        self.conv = conv_nd(dims)(
            in_channels,
            out_channels,
            kernel_size,
            padding=padding,
            dilation=dilation,
            bias=norm_layer is None,
        )
        if norm_layer is not None:
            self.norm = norm_layer(out_channels)
        if act_layer is not None:
            self.act = act_layer()


def batch_norm_affine(norm: nn.modules.batchnorm._BatchNorm):
    """``(scale, shift)`` with ``norm(x) == scale * x + shift`` per channel (eval statistics)."""
    scale = norm.running_var.add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift
