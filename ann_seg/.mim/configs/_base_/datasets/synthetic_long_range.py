# The built-in long-range synthetic set (ann_seg.datasets.synthetic), Cityscapes layout.
# Generate it with: ann-seg make-data data/synthetic_long_range
dataset_type = "LongRangeSyntheticDataset"
data_root = "data/synthetic_long_range"
crop_size = (128, 256)
# a training image or label map that cannot be used is logged and skipped (another sample is
# drawn); SkippedSamplesHook logs the count. num_classes: background + 4 (synthetic_metainfo(4))
train_pipeline = [
    dict(type="LoadImageOrSkip"),
    dict(type="LoadAnnotationsOrSkip", num_classes=5),
    dict(type="RandomFlip", prob=0.5),  # no colour jitter: the cue's hue is the label
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train"),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val"),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
custom_hooks = [dict(type="SkippedSamplesHook")]
