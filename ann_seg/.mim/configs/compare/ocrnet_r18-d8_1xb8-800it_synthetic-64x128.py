# mmseg's OCRNet (CascadeEncoderDecoder: an FCN head's coarse map, then object-contextual
# representations); its FCN stage plays the auxiliary head's part (stage 4, weight 0.4);
# ocr_channels 256 of 512 -> 32 of 64.
_base_ = ["mmseg::_base_/models/ocrnet_r50-d8.py", "./_base_synthetic_schedule.py"]
model = dict(
    data_preprocessor=_base_.synthetic_preprocessor,
    pretrained=None,
    backbone=_base_.synthetic_backbone,
    decode_head=[
        _base_.synthetic_auxiliary_head,
        dict(_base_.synthetic_decode_head, type="OCRHead", ocr_channels=32),
    ],
)
