# The model of our heads in the comparison: quarter-width ResNet-18-D8 from scratch, an FCN
# auxiliary head on stage 4; each head's config adds its type and own arguments.
_base_ = ["./_base_synthetic_schedule.py"]
model = dict(
    type="EncoderDecoder",
    data_preprocessor=_base_.synthetic_preprocessor,
    pretrained=None,
    backbone=_base_.synthetic_backbone,
    decode_head=_base_.synthetic_decode_head,
    auxiliary_head=_base_.synthetic_auxiliary_head,
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
