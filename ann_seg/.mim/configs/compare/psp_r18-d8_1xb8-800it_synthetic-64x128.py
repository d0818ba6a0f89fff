# mmseg's PSPNet head (pyramid pooling to 1, 2, 3, 6 bins) on its own mmseg:: model definition.
_base_ = ["mmseg::_base_/models/pspnet_r50-d8.py", "./_base_synthetic_schedule.py"]
model = dict(
    data_preprocessor=_base_.synthetic_preprocessor,
    pretrained=None,
    backbone=_base_.synthetic_backbone,
    decode_head=_base_.synthetic_decode_head,
    auxiliary_head=_base_.synthetic_auxiliary_head,
)
