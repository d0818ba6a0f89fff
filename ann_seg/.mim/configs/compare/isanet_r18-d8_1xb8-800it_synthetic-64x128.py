# mmseg's ISANet head (interlaced sparse attention); isa_channels 256 of 512 -> 32 of 64,
# down_factor (8, 8) on 64x128 Cityscapes features -> (2, 2) on our 8x16.
_base_ = ["mmseg::_base_/models/isanet_r50-d8.py", "./_base_synthetic_schedule.py"]
model = dict(
    data_preprocessor=_base_.synthetic_preprocessor,
    pretrained=None,
    backbone=_base_.synthetic_backbone,
    decode_head=dict(_base_.synthetic_decode_head, isa_channels=32, down_factor=(2, 2)),
    auxiliary_head=_base_.synthetic_auxiliary_head,
)
