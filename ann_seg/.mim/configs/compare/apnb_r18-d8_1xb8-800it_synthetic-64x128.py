# APNB only (S = 110 pyramid anchors) on stage 5.
_base_ = ["./_base_synthetic_r18-d8.py"]
model = dict(decode_head=dict(type="APNBSegHead", key_channels=32, dropout_ratio=0.0))
