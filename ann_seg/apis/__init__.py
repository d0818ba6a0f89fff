"""Library functions behind the tools (importable and tested)."""
from .runner import enable_amp, load_config, setup_launcher, test, train

__all__ = ['enable_amp', 'load_config', 'setup_launcher', 'test', 'train']
