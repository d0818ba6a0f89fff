"""The PyTorch model behind the predictor interface (``TorchPredictor``) and ``run_inference``:
segment images with a config and checkpoint through mmseg's inference API.

The model comes from ``ann_seg.mmseg.build_segmentor`` (weights through ann_seg's weights-only
checkpoint loader); a batch goes through ``mmseg.apis.inference_model`` (the sequential loop) or
``model.test_step`` on the pipelined loop's preprocessed batch (``pipeline``), so the config's
``test_pipeline`` and ``test_cfg`` apply as in ``ann-seg test``.
"""

import sys
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from mmseg.apis import inference_model

from ann_seg.mmseg import build_segmentor
from ann_seg.mmseg.speed import ResolvedSpeed, SpeedPolicy, apply_inference_speed, default_device

from .distributed import RankInfo
from .fingerprint import checkpoint_digest, model_fingerprint
from .folder import (
    DEFAULT_OUT_DIR,
    DistributedOptions,
    LoaderOptions,
    OutputOptions,
    segment_inputs,
)
from .inputs import ImageTask
from .pipeline import PreprocessDataset, collate, inference_pipeline, with_no_grad_test_step
from .predictor import Prediction, slide_window


def nonfinite_logits(result) -> Optional[str]:
    """Why ``result`` (a ``SegDataSample``) must not become a label map: its logits hold NaN or
    infinity (an overflow, broken weights); ``None`` when they are finite or absent."""
    logits = getattr(getattr(result, "seg_logits", None), "data", None)
    if logits is None:
        return None
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        return None
    bad = finite.numel() - int(finite.sum())
    return f"non-finite logits: {bad} of {finite.numel()} values are NaN or infinite"


def rank_device(info: RankInfo, requested: Optional[str] = None) -> str:
    """``requested``, with ``cuda`` (no index) meaning this rank's GPU; by default
    ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    if not info.distributed and info.launcher == "none":
        return requested or default_device()
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = f"cuda:{info.local_rank}" if requested == "cuda" else requested
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # stray allocations land on this rank's GPU
    return device


class TorchPredictor:
    """An mmseg segmentor (eval mode, ``speed`` applied) as a ``Predictor``."""

    def __init__(self, model: nn.Module, device: str, speed: ResolvedSpeed, fingerprint: dict):
        self.model, self.device, self.speed = model, device, speed
        self.classes = model.dataset_meta["classes"]
        self.palette = model.dataset_meta["palette"]
        self.slide = slide_window(model.test_cfg)
        self._fingerprint = fingerprint

    def fingerprint(self) -> dict:
        return self._fingerprint

    def describe(self) -> dict:
        cfg = self.model.cfg
        return {
            "config": getattr(cfg, "filename", None),
            "device": self.device,
            "speed": self.speed.record(),
            "test_cfg": dict(self.model.test_cfg) if self.model.test_cfg else {"mode": "whole"},
            "classes": self.classes,
            "palette": self.palette,
            "palette_source": self.model.dataset_meta["source"],
            "fingerprint": self._fingerprint,
        }

    def _predictions(self, results: list, want_logits: bool) -> List[Prediction]:
        predictions = []
        for result in results:
            problem = nonfinite_logits(result)
            label = result.pred_sem_seg.data[0].cpu().numpy()
            logits = None
            if want_logits and problem is None:
                logits = result.seg_logits.data.float().cpu().numpy()
            predictions.append(Prediction(label, logits, problem))
        return predictions

    def predict(self, images: List[np.ndarray], want_logits: bool) -> List[Prediction]:
        with self.speed.context():
            results = inference_model(self.model, images)
        return self._predictions(results, want_logits)

    def predict_preprocessed(self, items: list, want_logits: bool) -> List[Prediction]:
        """The pipelined loop's batch (``pipeline.Decoded`` items with their ``data``)."""
        with self.speed.context():
            results = with_no_grad_test_step(self.model, collate(items, self.device))
        return self._predictions(results, want_logits)

    def pipeline_dataset(
        self, tasks: Sequence[ImageTask], todo: Sequence[int], loader, keep_image: bool
    ) -> PreprocessDataset:
        """The pipelined loop's reading stage: decoding and the config's test pipeline."""
        return PreprocessDataset(
            tasks,
            todo,
            inference_pipeline(self.model.cfg),
            loader.max_pixels,
            loader.max_bytes,
            keep_image,
        )

    def forward_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """Each crop normalised by the model's data preprocessor, then ``encode_decode`` as
        mmseg's ``slide_inference`` calls it: (N, h, w, 3) BGR uint8 -> (N, C, h, w) float32."""
        preprocessor = self.model.data_preprocessor
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
        x = x.permute(0, 3, 1, 2).float()
        if getattr(preprocessor, "channel_conversion", False):
            x = x[:, [2, 1, 0]]
        x = (x - preprocessor.mean) / preprocessor.std
        metas = [dict(img_shape=tuple(tiles.shape[1:3]))] * len(tiles)
        with torch.no_grad(), self.speed.context():
            logits = self.model.encode_decode(x, metas)
        return logits.float().cpu().numpy()


def load_predictor(
    config,
    checkpoint: str,
    device: str,
    speed: Optional[SpeedPolicy] = None,
    cfg_options: Optional[dict] = None,
    quiet: bool = False,
) -> TorchPredictor:
    """The model with ``speed`` applied, with its fingerprint (the checkpoint hashed first)."""
    resolved = (speed or SpeedPolicy()).resolve(device)
    if resolved.note and not quiet:
        print(f"speed: {resolved.name} ({resolved.note})", file=sys.stderr)
    checkpoint_hash = checkpoint_digest(str(checkpoint))
    model = build_segmentor(config, device=device, cfg_options=cfg_options, checkpoint=checkpoint)
    apply_inference_speed(model, resolved)
    fingerprint = model_fingerprint(
        model.cfg, str(checkpoint), checkpoint_hash, resolved.record(), device, model.dataset_meta
    )
    return TorchPredictor(model, device, resolved, fingerprint)


def run_inference(
    config,
    checkpoint: str,
    input_path: str,
    out_dir: str = DEFAULT_OUT_DIR,
    *,
    outputs: Optional[OutputOptions] = None,
    loader: Optional[LoaderOptions] = None,
    speed: Optional[SpeedPolicy] = None,
    distributed: Optional[DistributedOptions] = None,
    device: Optional[str] = None,
    cfg_options: Optional[dict] = None,
    progress: bool = True,
) -> dict:
    """Segment every image of ``input_path`` (image, folder or list file) into ``out_dir``
    with ``config`` and ``checkpoint``; ``speed`` (``ann_seg.mmseg.speed``; default float32
    as the config builds it) is applied to the model, the summary records what ran.

    Everything else (options, journal, resume, failures, the returned summary, errors) is
    ``folder.segment_inputs``'s; ``ModelLoadError`` when the config or checkpoint cannot be
    loaded (after the output folder is checked and locked)."""

    def load(info: RankInfo) -> TorchPredictor:
        device_here = rank_device(info, device)
        return load_predictor(config, checkpoint, device_here, speed, cfg_options, info.rank != 0)

    config_name = config if isinstance(config, str) else getattr(config, "filename", None)
    return segment_inputs(
        load,
        input_path,
        out_dir,
        model_fields={"config": config_name, "checkpoint": str(checkpoint)},
        outputs=outputs,
        loader=loader,
        distributed=distributed,
        progress=progress,
    )
