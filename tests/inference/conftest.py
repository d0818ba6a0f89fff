"""Fixtures of the inference tests: small random-weight checkpoints (one per test module)."""

import pytest
from _inference_helpers import DEMO_CONFIG, make_checkpoint, write_tiny_slide_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, checkpoint) of the tiny slide-mode model."""
    root = tmp_path_factory.mktemp("tiny_model")
    config = write_tiny_slide_config(root)
    return config, make_checkpoint(config, str(root / "tiny.pth"))


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    """The demo config's model with small random weights (scale 0.1)."""
    path = tmp_path_factory.mktemp("demo_model") / "demo.pth"
    return make_checkpoint(DEMO_CONFIG, str(path), scale=0.1)
