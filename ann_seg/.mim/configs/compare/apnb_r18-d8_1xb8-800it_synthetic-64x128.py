# APNB only (S = 110 pyramid anchors) on stage 5.
_base_ = ["./_base_synthetic_r18-d8.py"]
custom_imports = dict(imports=["ann_seg"], allow_failed_imports=False)
model = dict(decode_head=dict(type="APNBSegHead", key_channels=32, dropout_ratio=0.0))
