# Local baseline: FCN head (two 3x3 convs), no non-local context.
_base_ = ["./_base_synthetic_r18-d8.py"]
model = dict(decode_head=dict(type="FCNHead", num_convs=2, concat_input=True, dropout_ratio=0.1))
