"""Cityscapes' label definitions (cityscapesScripts' ``helpers/labels.py``) that ann_seg needs
without the optional ``cityscapesscripts`` package: the 19 evaluated classes with their label
ids, and the id <-> train id look-up tables. ``tests/data`` checks them against the package."""

import numpy as np

IGNORE = 255
# (label id, name, train id) of every label with an id in 0..33 (license plate, id -1, is
# never written to label images)
LABELS = (
    (0, "unlabeled", IGNORE),
    (1, "ego vehicle", IGNORE),
    (2, "rectification border", IGNORE),
    (3, "out of roi", IGNORE),
    (4, "static", IGNORE),
    (5, "dynamic", IGNORE),
    (6, "ground", IGNORE),
    (7, "road", 0),
    (8, "sidewalk", 1),
    (9, "parking", IGNORE),
    (10, "rail track", IGNORE),
    (11, "building", 2),
    (12, "wall", 3),
    (13, "fence", 4),
    (14, "guard rail", IGNORE),
    (15, "bridge", IGNORE),
    (16, "tunnel", IGNORE),
    (17, "pole", 5),
    (18, "polegroup", IGNORE),
    (19, "traffic light", 6),
    (20, "traffic sign", 7),
    (21, "vegetation", 8),
    (22, "terrain", 9),
    (23, "sky", 10),
    (24, "person", 11),
    (25, "rider", 12),
    (26, "car", 13),
    (27, "truck", 14),
    (28, "bus", 15),
    (29, "caravan", IGNORE),
    (30, "trailer", IGNORE),
    (31, "train", 16),
    (32, "motorcycle", 17),
    (33, "bicycle", 18),
)
NUM_TRAIN_IDS = 19
TRAIN_ID_NAMES = tuple(name for _, name, t in sorted(LABELS, key=lambda r: r[2]) if t != IGNORE)
TRAIN_ID_TO_ID = tuple(i for i, _, t in sorted(LABELS, key=lambda r: r[2]) if t != IGNORE)
LABEL_IDS = frozenset(i for i, _, _ in LABELS)
INSTANCE_IDS = frozenset(range(24, 34))  # person ... bicycle: hasInstances in labels.py


def id_to_train_id_lut() -> np.ndarray:
    """256-entry uint8 table: label id -> train id (255 for ignored and unknown ids)."""
    lut = np.full(256, IGNORE, np.uint8)
    for label_id, _, train_id in LABELS:
        lut[label_id] = train_id
    return lut


def train_id_to_id_lut() -> np.ndarray:
    """256-entry uint8 table: train id -> label id (255 -> 0, unlabeled; what the benchmark
    server expects in a submission)."""
    lut = np.zeros(256, np.uint8)
    lut[:NUM_TRAIN_IDS] = TRAIN_ID_TO_ID
    return lut
