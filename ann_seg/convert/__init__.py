"""Checkpoint converters."""

from .mmseg_ann import ConversionError, convert_checkpoint, convert_state_dict

__all__ = ["ConversionError", "convert_checkpoint", "convert_state_dict"]
