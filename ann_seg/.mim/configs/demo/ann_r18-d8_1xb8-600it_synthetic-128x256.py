# Demo: ANN on a quarter-width ResNet-18-D8 (base 16 channels) trained from scratch on the
# built-in long-range synthetic set.
# Runs on a 2-core CPU in a few minutes: ann-seg demo (or ann-seg train with this file).
_base_ = [
    "../_base_/models/ann_r50-d8.py",
    "../_base_/datasets/synthetic_long_range.py",
    "mmseg::_base_/default_runtime.py",
]
custom_imports = dict(imports=["ann_seg"], allow_failed_imports=False)
num_classes = 5  # background + 4 object classes (synthetic_metainfo(4))
norm_cfg = dict(type="BN", requires_grad=True)
crop_size = (128, 256)
# objects cover ~4% of the pixels: down-weight the background, or training from scratch settles
# on "everything is background" for hundreds of iterations
# WeightedCrossEntropyLoss: mmseg 1.2.2's CrossEntropyLoss fails with class_weight as soon as a
# label map holds ignore (255) or padding pixels (mmseg #3734)
loss = dict(type="WeightedCrossEntropyLoss", class_weight=[0.2, 1.0, 1.0, 1.0, 1.0])
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(depth=18, stem_channels=16, base_channels=16, norm_cfg=norm_cfg),
    decode_head=dict(
        in_channels=[64, 128],
        channels=64,
        key_channels=32,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        loss_decode=dict(loss, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        in_channels=64,
        channels=32,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        loss_decode=dict(loss, loss_weight=0.4),
    ),
)
max_iters = 600
optim_wrapper = dict(
    type="OptimWrapper", optimizer=dict(type="AdamW", lr=2e-3, weight_decay=1e-4), clip_grad=None
)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type="PolyLR", eta_min=1e-5, power=0.9, begin=50, end=max_iters, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=300)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=25, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(
        type="AtomicCheckpointHook",
        by_epoch=False,
        interval=300,
        max_keep_ckpts=2,
        save_best="mIoU",
    ),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
randomness = dict(seed=0)
