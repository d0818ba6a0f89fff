# CGNL head (Taylor-expanded Gaussian kernel, 8 channel groups).
_base_ = ["./_base_synthetic_r18-d8.py"]
model = dict(
    decode_head=dict(type="CGNLSegHead", groups=8, kernel="gaussian", order=3, dropout_ratio=0.1)
)
