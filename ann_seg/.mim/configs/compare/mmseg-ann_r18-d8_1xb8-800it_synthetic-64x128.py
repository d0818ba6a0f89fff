# mmseg's own ANNHead (AFNB stage 4/5 + APNB, key pools 1, 3, 6, 8), beside ours (ann_...);
# project_channels 256 of 512 -> 32 of 64.
_base_ = ["mmseg::_base_/models/ann_r50-d8.py", "./_base_synthetic_schedule.py"]
model = dict(
    data_preprocessor=_base_.synthetic_preprocessor,
    pretrained=None,
    backbone=_base_.synthetic_backbone,
    decode_head=dict(
        _base_.synthetic_decode_head, in_channels=[64, 128], in_index=[2, 3], project_channels=32
    ),
    auxiliary_head=_base_.synthetic_auxiliary_head,
)
