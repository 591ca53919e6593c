"""SENet parity with timm's legacy_* models (the official Caffe topology and converted official weights)."""
import pytest
import timm
import torch
from _oracle import load_converted, random_model, timm_twins
from conftest import max_diff_f32

import backbones
from backbones.models.senet import checkpoint_filter_fn

ORACLES = timm_twins('senet')  # timm's legacy_* models: the official Caffe topology

DEEP = {'se_resnet101', 'se_resnet152', 'se_resnext101_32x4d', 'senet_154'}
# 224 and a non-square size for every variant; the deep nets' 224 run (same mapping, 4-20 GMACs) is `-m slow`.
CASES = [(n, s) for n in sorted(ORACLES) for s in [(224, 224), (96, 64)]]
CASES = [pytest.param(n, s, marks=pytest.mark.slow) if n in DEEP and s[0] == 224 else (n, s) for n, s in CASES]


@pytest.mark.parametrize('name,size', CASES)
def test_parity_with_timm_legacy(name, size):
    oracle = random_model(ORACLES[name])
    model = load_converted(name, oracle.state_dict(), checkpoint_filter_fn)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected, got = oracle(x), model(x)
    assert max_diff_f32(got, expected) <= 1e-5


def test_stride_placement_is_caffe():
    """SE-ResNet strides in the first 1x1 (official), SE-ResNeXt / SENet-154 in the grouped 3x3."""
    r = timm.create_model('se_resnet50', device='meta')
    x = timm.create_model('se_resnext50_32x4d', device='meta')
    s = timm.create_model('senet_154', device='meta')
    assert r.stages[1].blocks[0].conv1.conv.stride == (2, 2) and r.stages[1].blocks[0].conv2.conv.stride == (1, 1)
    assert x.stages[1].blocks[0].conv1.conv.stride == (1, 1) and x.stages[1].blocks[0].conv2.conv.stride == (2, 2)
    assert s.stages[1].blocks[0].downsample.conv.kernel_size == (3, 3)
    assert s.stages[0].blocks[0].downsample.conv.kernel_size == (1, 1)
    assert r.stages[0].downsample.ceil_mode and r.stages[0].downsample.padding == 0  # the Caffe stem pool
    assert s.head.drop.p == 0.2 and r.head.drop.p == 0.0


def test_family_metadata():
    fam = backbones.get_family('se_resnet50')
    assert fam.arxiv == '1709.01507' and fam.repo == 'hujie-frank/SENet'
