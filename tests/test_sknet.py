"""SKNet: parity with timm's skresnext50_32x4d (both stem pools), official parameter counts, the SKNet-101 quirk."""
import copy

import pytest
import timm
import torch
import torch.nn as nn
from _oracle import load_converted, random_model, timm_twin
from conftest import max_diff_f32

from backbones.models.sknet import SKNet, checkpoint_filter_fn


def _params(name, **kwargs):
    model = timm.create_model(name, device='meta', **kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope='module')
def oracle():
    """timm's SKNet-50 twin with non-trivial random weights."""
    return random_model(timm_twin('sknet50'))


def _ours_from(oracle, **kwargs):
    return load_converted('sknet50', oracle.state_dict(), checkpoint_filter_fn, **kwargs)


@pytest.mark.parametrize('shape', [(2, 3, 224, 224), (1, 3, 128, 192)])
def test_parity_timm(oracle, shape):
    model = _ours_from(oracle)
    x = torch.randn(shape)
    with torch.no_grad():
        ref, out = oracle(x), model(x)
    assert ref.abs().max() > 0.1
    assert max_diff_f32(out, ref) <= 1e-5


def test_parity_timm_caffe_pool(oracle):
    """``stem_pool='max_caffe'`` equals timm's net with its stem pool swapped for Caffe's (pad 0, ceil)."""
    caffe = copy.deepcopy(oracle)
    caffe.maxpool = nn.MaxPool2d(3, 2, ceil_mode=True)
    model = _ours_from(caffe, stem_pool='max_caffe')
    x = torch.randn(1, 3, 81, 113)  # odd sides: ceil rounding matters
    with torch.no_grad():
        ref, out = caffe(x), model(x)
        plain = oracle(x)
    assert max_diff_f32(out, ref) <= 1e-5
    assert ref.shape == plain.shape and (ref - plain).abs().max() > 1e-3  # the two pools are really different


def test_param_counts():
    assert _params('sknet50') == 27_479_784  # (timm's twin: the checkpoint contract)
    assert _params('sknet101') == 48_686_760


def test_fuse_dims():
    def dims(model):
        return [sorted({b.conv2.attn.fc_reduce.out_channels for b in stage.blocks}) for stage in model.stages]

    assert dims(timm.create_model('sknet50', device='meta')) == [[32], [32], [32], [64]]
    assert dims(timm.create_model('sknet101', device='meta')) == [[32], [16], [32], [64]]
    # with the paper rule max(C/16, 32) everywhere, SKNet-101 has 4 x (256*16 + 2*16 + 16*512) = 49,280 more params
    rule = SKNet(depths=(3, 4, 23, 3), device='meta')
    assert sum(p.numel() for p in rule.parameters()) == 48_686_760 + 49_280

