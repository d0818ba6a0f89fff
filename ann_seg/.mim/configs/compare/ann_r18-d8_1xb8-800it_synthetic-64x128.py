# Full ANN head: AFNB(stage 4, stage 5) + APNB.
_base_ = ["./_base_synthetic_r18-d8.py"]
model = dict(
    decode_head=dict(
        type="ANNSegHead",
        in_channels=[64, 128],
        in_index=[2, 3],
        key_channels=32,
        dropout_ratio=0.0,
    )
)
