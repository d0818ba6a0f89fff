# mmseg's DNL head (disentangled non-local, embedded Gaussian, reduction 2).
_base_ = ["mmseg::_base_/models/dnl_r50-d8.py", "./_base_synthetic_schedule.py"]
model = dict(
    data_preprocessor=_base_.synthetic_preprocessor,
    pretrained=None,
    backbone=_base_.synthetic_backbone,
    decode_head=_base_.synthetic_decode_head,
    auxiliary_head=_base_.synthetic_auxiliary_head,
)
