"""Res2Net: parity with timm (the official topology and re-hosted official weights), counts, the split's first block."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from _oracle import load_converted, meta_model, num_params, random_model, redraw_, timm_twins
from conftest import assert_close_f32

from backbones import list_models
from backbones._registry import get_variant_info
from backbones.bench import calibrate_bn_
from backbones.layers import Res2Split
from backbones.models.res2net import checkpoint_filter_fn

TIMM_NAMES = timm_twins('res2net')  # zoo name -> timm entrypoint (same architecture; timm's layout is the official one)
OFFICIAL_PARAMS = {
    'res2net50': 25_699_120,
    'res2net50_w48s2': 25_287_304,
    'res2net50_w14s8': 25_059_816,
    'res2net50_w26s6': 37_051_448,
    'res2net50_w26s8': 48_403_776,
    'res2net101': 45_206_688,
    'res2next50_4s': 24_671_464,
    'res2net50_v1b': 25_718_352,
    'res2net101_v1b': 45_225_920,
}


def test_variants_registered():
    assert sorted(list_models('res2ne*')) == sorted(TIMM_NAMES)


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS))
def test_param_count(name):
    assert num_params(meta_model(name)) == OFFICIAL_PARAMS[name] == get_variant_info(name).params


# ---------------------------------------------------------------- parity with timm

@pytest.mark.parametrize('name', list(TIMM_NAMES))
def test_parity_timm(name):
    """timm model with re-drawn weights -> our filter -> identical logits, at 224 and at an odd non-square size.

    The BatchNorm statistics are calibrated (O(1) logits, as trained weights give), so that 1e-5 stays a tight
    tolerance: our models run channels-last, whose convolutions round differently from timm's contiguous ones."""
    ref = random_model(TIMM_NAMES[name])
    calibrate_bn_(ref, torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1)))
    model = load_converted(name, ref.state_dict(), checkpoint_filter_fn)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for shape in ((2, 3, 224, 224), (1, 3, 97, 130)):
            x = torch.randn(shape, generator=g)
            expected = ref(x)
            assert expected.std() > 0.1  # the re-draw keeps the signal alive
            assert_close_f32(model(x), expected)


def test_pretrained_loading_through_timm():
    """timm's pretrained path (filter, first-conv adaptation, classifier reset) with a timm-layout state dict."""
    ref = random_model('res2net50d')
    sd = ref.state_dict()
    model = timm.create_model(
        'res2net50_v1b', pretrained=True, pretrained_cfg_overlay=dict(state_dict=sd), in_chans=1, num_classes=10)
    torch.testing.assert_close(model.stem.conv1.conv.weight, sd['conv1.0.weight'].sum(1, keepdim=True))
    torch.testing.assert_close(model.stem.conv3.bn.running_var, sd['bn1.running_var'])
    torch.testing.assert_close(model.stages[3].blocks[0].downsample.conv.weight, sd['layer4.0.downsample.1.weight'])
    assert model.head.fc.out_features == 10


# ---------------------------------------------------------------- the hierarchical split, by hand

def _conv_bn_relu(m, x, stride):
    """A ConvNormAct (3x3, pad 1, eval-mode BN, ReLU) evaluated from its own weights with plain ops."""
    conv, bn = m.conv, m.bn
    y = F.conv2d(x, conv.weight, stride=stride, padding=1, groups=conv.groups)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    y = (y - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]
    return y.clamp_min(0)


def _avg3x3_count_pad(x, stride):
    """3x3 average with zero padding 1 counted in the divisor (always / 9)."""
    h, w = x.shape[-2:]
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    xp = F.pad(x, (1, 1, 1, 1))
    total = sum(xp[..., i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
                for i in range(3) for j in range(3))
    return total / 9


def _split(scale, width, groups, stride, first):
    m = Res2Split(scale * width, scale * width, stride=stride, first=first, scale=scale, groups=groups)
    return redraw_(m).eval()


@pytest.mark.parametrize('stride', [1, 2])
def test_first_block_pools_last_chunk_without_hierarchy(stride):
    scale, width = 4, 6
    m = _split(scale, width, groups=2, stride=stride, first=True)
    x = torch.randn(2, scale * width, 9, 8)
    xs = x.split(width, 1)
    expected = [_conv_bn_relu(m.convs[i], xs[i], stride) for i in range(scale - 1)]  # z_i = x_i
    expected.append(_avg3x3_count_pad(xs[-1], stride))
    with torch.no_grad():
        out = m(x)
    assert out.shape == (2, scale * width, (9 - 1) // stride + 1, (8 - 1) // stride + 1)
    torch.testing.assert_close(out, torch.cat(expected, 1), atol=1e-5, rtol=1e-5)
    if stride == 2:  # the border windows are divided by 9, not by the number of valid pixels
        assert not torch.allclose(out[:, -width:], F.avg_pool2d(xs[-1], 3, 2, 1, count_include_pad=False))


def test_later_block_is_hierarchical():
    scale, width = 4, 6
    m = _split(scale, width, groups=2, stride=1, first=False)
    x = torch.randn(2, scale * width, 7, 9)
    xs = x.split(width, 1)
    expected, y = [], None
    for i in range(scale - 1):
        y = _conv_bn_relu(m.convs[i], xs[i] if i == 0 else xs[i] + y, 1)
        expected.append(y)
    expected.append(xs[-1])
    with torch.no_grad():
        torch.testing.assert_close(m(x), torch.cat(expected, 1), atol=1e-5, rtol=1e-5)


def test_scale_one_is_a_single_conv():
    m = _split(1, 8, groups=1, stride=2, first=True)
    assert len(m.convs) == 1 and isinstance(m.pool, nn.Identity)
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _conv_bn_relu(m.convs[0], x, 2), atol=1e-5, rtol=1e-5)


def test_first_flag_in_model():
    """Only the first block of each stage uses the stage form (pooled last chunk, no hierarchy)."""
    model = timm.create_model('res2net50_w26s6', device='meta')
    for stage in model.stages:
        for i, block in enumerate(stage.blocks):
            mixer = block.conv2
            assert mixer.first == (i == 0)
            assert isinstance(mixer.pool, nn.AvgPool2d) == (i == 0)
            assert len(mixer.convs) == 5
    pool = model.stages[1].blocks[0].conv2.pool
    assert (pool.kernel_size, pool.stride, pool.padding, pool.count_include_pad) == (3, 2, 1, True)
