# Non-local head (embedded Gaussian) over all N positions.
_base_ = ["./_base_synthetic_r18-d8.py"]
model = dict(
    decode_head=dict(type="NLSegHead", mode="embedded_gaussian", reduction=2, dropout_ratio=0.1)
)
