"""bfloat16 autocast training on the CPU: mmengine's ``AmpOptimWrapper`` accepts only
GPU/NPU/MLU/MUSA devices, so this wrapper adds the autocast context to a plain optimizer
step (bfloat16 needs no loss scaling)."""

import contextlib

import torch
from mmengine.optim import OptimWrapper
from mmseg.registry import OPTIM_WRAPPERS

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@OPTIM_WRAPPERS.register_module()
class CPUAutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward (``optim_context``) runs under
    ``torch.autocast('cpu', dtype)``; backward and the step stay as they are.

    Args:
        dtype: ``'bfloat16'`` (default) or ``'float16'``.
        **kwargs: ``OptimWrapper``'s.
    """

    def __init__(self, dtype: str = "bfloat16", **kwargs):
        if dtype not in DTYPES:
            raise ValueError(
                f"CPUAutocastOptimWrapper: dtype must be one of {list(DTYPES)}, got {dtype!r}"
            )
        super().__init__(**kwargs)
        self.cast_dtype = DTYPES[dtype]

    @contextlib.contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast("cpu", dtype=self.cast_dtype):
            yield
