"""``RisingScore``: a validation metric whose mIoU is the iteration, so that every validation
saves a new best checkpoint (imported by ``sitecustomize`` with ``FAULT_RISING_SCORE=1``, or
by a test in its own process)."""

from mmengine.evaluator import BaseMetric
from mmengine.logging import MessageHub
from mmseg.registry import METRICS


@METRICS.register_module(force=True)
class RisingScore(BaseMetric):
    def __init__(self, **kwargs):
        super().__init__()

    def process(self, data_batch, data_samples):
        self.results.append(0)

    def compute_metrics(self, results):
        return {"mIoU": float(MessageHub.get_current_instance().get_info("iter", 0))}
