"""Checkpoint converters: mmseg's ANN and NonLocal checkpoints to ann_seg's heads."""

from .mmseg_ann import ConversionError, convert_checkpoint, convert_state_dict

__all__ = ["ConversionError", "convert_checkpoint", "convert_state_dict"]
