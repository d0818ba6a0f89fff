# Non-local head (embedded Gaussian) over all N positions.
_base_ = ["./_base_synthetic_r18-d8.py"]
custom_imports = dict(imports=["ann_seg"], allow_failed_imports=False)
model = dict(
    decode_head=dict(type="NLSegHead", mode="embedded_gaussian", reduction=2, dropout_ratio=0.1)
)
