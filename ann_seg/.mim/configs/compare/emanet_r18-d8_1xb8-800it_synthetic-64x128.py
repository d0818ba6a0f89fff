# mmseg's EMANet head (expectation-maximisation attention, 3 stages); ema_channels 512 -> 64 and
# channels 256 -> 32 with the width, 64 bases for N = 8192 -> 16 for N = 128.
_base_ = ["mmseg::_base_/models/emanet_r50-d8.py", "./_base_synthetic_schedule.py"]
model = dict(
    data_preprocessor=_base_.synthetic_preprocessor,
    pretrained=None,
    backbone=_base_.synthetic_backbone,
    decode_head=dict(_base_.synthetic_decode_head, channels=32, ema_channels=64, num_bases=16),
    auxiliary_head=_base_.synthetic_auxiliary_head,
)
