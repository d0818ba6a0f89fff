"""Train and test through mmengine's Runner, as mmseg's tools do, plus CPU-distributed support.

mmseg's ``tools/train.py``/``test.py`` behave the same with our configs (they carry
``custom_imports``); these functions add what they lack: ``mmseg::`` config names, and
torchrun on CPU-only machines (gloo), where mmengine's own launcher calls
``torch.cuda.set_device`` and fails.
"""
import logging
import os
import os.path as osp
from typing import Optional, Union

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log

ConfigLike = Union[str, Config]


def load_config(config: ConfigLike, cfg_options: Optional[dict] = None,
                work_dir: Optional[str] = None) -> Config:
    """Read a config file (a path, or ``mmseg::ann/...py``), merge ``cfg_options`` and set
    ``work_dir`` (default ``./work_dirs/<config name>``), as mmseg's tools do."""
    if isinstance(config, Config):
        cfg = config.copy()
        name = osp.splitext(osp.basename(cfg.filename or 'config'))[0]
    elif '::' in config:
        from mmengine.hub import get_config
        cfg = get_config(config)
        name = osp.splitext(osp.basename(config.split('::', 1)[1]))[0]
    else:
        if not osp.isfile(config):
            raise FileNotFoundError(f'config file not found: {config}')
        cfg = Config.fromfile(config)
        name = osp.splitext(osp.basename(config))[0]
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', name)
    return cfg


def _replace_sync_bn(node):
    """SyncBN has no CPU implementation: use plain BN in the config tree."""
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _replace_sync_bn(value)


def setup_launcher(cfg: Config, launcher: str = 'none') -> Config:
    """Set ``cfg.launcher``; for ``pytorch`` without CUDA, start the gloo process group from
    torchrun's environment and configure DDP and BN for the CPU."""
    cfg.launcher = launcher
    if launcher == 'pytorch' and not torch.cuda.is_available():
        if not dist.is_initialized():
            for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
                if key not in os.environ:
                    raise RuntimeError(f'--launcher pytorch needs torchrun\'s environment '
                                       f'({key} is not set); start with tools/dist_train.sh')
            dist.init_process_group(backend='gloo')
        cfg.env_cfg = dict(cfg.get('env_cfg', {}), dist_cfg=dict(backend='gloo'))
        # device_ids=None: mmengine would pass [LOCAL_RANK], which DDP refuses for CPU modules
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                     broadcast_buffers=False,
                                     find_unused_parameters=cfg.get('find_unused_parameters',
                                                                    False))
        _replace_sync_bn(cfg._cfg_dict)
    return cfg


def enable_amp(cfg: Config) -> Config:
    wrapper = cfg.optim_wrapper.type
    if wrapper == 'AmpOptimWrapper':
        print_log('AMP training is already enabled in your config.', logger='current',
                  level=logging.WARNING)
        return cfg
    if wrapper != 'OptimWrapper':
        raise ValueError(f'--amp needs optim_wrapper.type "OptimWrapper", got {wrapper!r}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    if torch.cuda.is_available():
        cfg.optim_wrapper.loss_scale = 'dynamic'
    else:
        # bf16 autocast on the CPU needs no loss scaling
        cfg.optim_wrapper.dtype = 'bfloat16'
    return cfg


def build_runner(cfg: Config):
    from mmengine.runner import Runner
    from mmseg.registry import RUNNERS
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def train(config: ConfigLike, work_dir: Optional[str] = None, resume: bool = False,
          amp: bool = False, cfg_options: Optional[dict] = None, launcher: str = 'none'):
    """Train as ``mmseg``'s ``tools/train.py``; returns the trained model."""
    import ann_seg  # noqa: F401  (registers our modules)
    cfg = load_config(config, cfg_options, work_dir)
    setup_launcher(cfg, launcher)
    if amp:
        enable_amp(cfg)
    cfg.resume = resume
    runner = build_runner(cfg)
    return runner.train()


def _trigger_visualization(cfg: Config, show_dir: str) -> None:
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError('--show-dir needs a VisualizationHook in default_hooks, e.g. '
                           'visualization=dict(type="SegVisualizationHook")')
    hooks['visualization']['draw'] = True
    cfg.visualizer['save_dir'] = show_dir


def test(config: ConfigLike, checkpoint: str, work_dir: Optional[str] = None,
         out: Optional[str] = None, show_dir: Optional[str] = None, tta: bool = False,
         cfg_options: Optional[dict] = None, launcher: str = 'none') -> dict:
    """Evaluate ``checkpoint`` as ``mmseg``'s ``tools/test.py``; returns the metrics dict."""
    import ann_seg  # noqa: F401
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    cfg = load_config(config, cfg_options, work_dir)
    setup_launcher(cfg, launcher)
    cfg.load_from = checkpoint
    if show_dir:
        _trigger_visualization(cfg, show_dir)
    if tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError('--tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if out is not None:
        cfg.test_evaluator['output_dir'] = out
        cfg.test_evaluator['keep_results'] = True
    runner = build_runner(cfg)
    return runner.test()

