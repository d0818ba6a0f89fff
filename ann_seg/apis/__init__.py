"""Library functions behind the tools (importable and tested)."""
from .inference import run_inference
from .runner import enable_amp, load_config, setup_launcher, test, train

__all__ = ['enable_amp', 'run_inference', 'load_config', 'setup_launcher', 'test', 'train']
