# Shared by every head of the comparison (python -m research.compare_heads): data, loss, optimizer,
# schedule, runtime, and the backbone/pre-processor/auxiliary head that the model configs take
# through _base_.synthetic_* (our heads in _base_synthetic_r18-d8.py, mmseg's heads on top of
# their own mmseg:: model definitions).
_base_ = ["../_base_/datasets/synthetic_long_range.py", "mmseg::_base_/default_runtime.py"]
custom_imports = dict(imports=["ann_seg"], allow_failed_imports=False)
num_classes = 5
crop_size = (64, 128)
data_root = "data/synthetic_long_range_64x128"
synthetic_norm_cfg = dict(type="BN", requires_grad=True)
# WeightedCrossEntropyLoss: mmseg 1.2.2's CrossEntropyLoss fails with class_weight as soon as a
# label map holds ignore (255) or padding pixels (mmseg #3734)
loss = dict(type="WeightedCrossEntropyLoss", class_weight=[0.2, 1.0, 1.0, 1.0, 1.0])
synthetic_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
)
# a quarter-width ResNet-18-D8 from scratch: stages of 16, 32, 64, 128 channels, output stride 8
synthetic_backbone = dict(
    type="ResNetV1c",
    depth=18,
    stem_channels=16,
    base_channels=16,
    num_stages=4,
    out_indices=(0, 1, 2, 3),
    dilations=(1, 1, 2, 4),
    strides=(1, 2, 1, 1),
    norm_cfg=synthetic_norm_cfg,
    norm_eval=False,
    style="pytorch",
    contract_dilation=True,
)
# every decode head: stage 5 (128 channels) in, 64 channels inside, the same loss
synthetic_decode_head = dict(
    in_channels=128,
    in_index=3,
    channels=64,
    num_classes=num_classes,
    norm_cfg=synthetic_norm_cfg,
    align_corners=False,
    loss_decode=dict(loss, loss_weight=1.0),
)
synthetic_auxiliary_head = dict(
    type="FCNHead",
    in_channels=64,
    in_index=2,
    channels=32,
    num_convs=1,
    concat_input=False,
    dropout_ratio=0.1,
    num_classes=num_classes,
    norm_cfg=synthetic_norm_cfg,
    align_corners=False,
    loss_decode=dict(loss, loss_weight=0.4),
)
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
max_iters = 800
optim_wrapper = dict(
    type="OptimWrapper", optimizer=dict(type="AdamW", lr=2e-3, weight_decay=1e-4), clip_grad=None
)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type="PolyLR", eta_min=1e-5, power=0.9, begin=50, end=max_iters, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=100)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(
        type="AtomicCheckpointHook", by_epoch=False, interval=max_iters, max_keep_ckpts=1
    ),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
randomness = dict(seed=0)
