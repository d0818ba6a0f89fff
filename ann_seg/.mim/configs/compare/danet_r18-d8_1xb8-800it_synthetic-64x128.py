# mmseg's DANet head (position + channel attention); pam_channels scaled with the width: 64 of 512
# -> 8 of 64.
_base_ = ["mmseg::_base_/models/danet_r50-d8.py", "./_base_synthetic_schedule.py"]
model = dict(
    data_preprocessor=_base_.synthetic_preprocessor,
    pretrained=None,
    backbone=_base_.synthetic_backbone,
    decode_head=dict(_base_.synthetic_decode_head, pam_channels=8),
    auxiliary_head=_base_.synthetic_auxiliary_head,
)
