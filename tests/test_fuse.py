"""Every optimised inference path computes what the plain path computes."""
import os.path as osp

import pytest
import torch
from conftest import CONFIGS, randomize_


def build(config, **options):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import ann_seg  # noqa: F401
    from ann_seg.apis.runner import load_config
    register_all_modules()
    cfg = load_config(config, dict({'model.pretrained': None}, **options))
    return randomize_(MODELS.build(cfg.model), std=0.1, mean_std=0.1).eval()


SMALL = {'model.backbone.depth': 18, 'model.backbone.norm_cfg.type': 'BN',
         'model.decode_head.norm_cfg.type': 'BN', 'model.auxiliary_head.norm_cfg.type': 'BN',
         'model.auxiliary_head.in_channels': 256, 'model.auxiliary_head.channels': 32}
CASES = {
    'ann': ('ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py',
            {'model.decode_head.in_channels': [256, 512], 'model.decode_head.channels': 64,
             'model.decode_head.key_channels': 32}),
    'ann_add_keyvalue': ('ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py',
                         {'model.decode_head.in_channels': [256, 512],
                          'model.decode_head.channels': 64, 'model.decode_head.key_channels': 32,
                          'model.decode_head.fusion': 'add',
                          'model.decode_head.share': 'key_value'}),
    'nonlocal': ('nonlocal/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py',
                 {'model.decode_head.in_channels': 512, 'model.decode_head.channels': 64}),
    'cgnl': ('cgnl/cgnl_r50-d8_4xb2-40k_cityscapes-512x1024.py',
             {'model.decode_head.in_channels': 512, 'model.decode_head.channels': 64}),
}


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('channels_last', [False, True])
def test_fused_model_matches_plain(case, channels_last):
    from ann_seg.models.fuse import fuse_for_inference
    config, options = CASES[case]
    model = build(osp.join(CONFIGS, config), **SMALL, **options)
    images = torch.randn(2, 3, 67, 91, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images, mode='tensor')
        fuse_for_inference(model, channels_last=channels_last)
        got = model(images.contiguous(memory_format=torch.channels_last)
                    if channels_last else images, mode='tensor')
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-4, rel
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not norms, f'{len(norms)} BatchNorms left unfolded'


def test_folding_removes_attention_output_and_refuses_training():
    from ann_seg.models.blocks import APNB
    from ann_seg.models.fuse import fold_batch_norms, fuse_for_inference
    block = APNB(32, 32, 16)
    with pytest.raises(RuntimeError, match='eval'):
        block.fold_()
    with pytest.raises(RuntimeError, match='eval'):
        fold_batch_norms(block)
    fuse_for_inference(block)
    # the merged conv reads cat(O, X): value (16) + input (32) channels instead of 32 + 32
    assert block.fuse[0].weight.shape[:2] == (32, 48)
