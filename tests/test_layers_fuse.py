"""Inference folding helpers (backbones/layers/fuse.py): conv + BN and per-channel scales, against the unfused pair."""
import pytest
import torch
import torch.nn as nn

from backbones.layers import ConvNormAct, fuse_conv_bn, scale_conv_


def _bn(chs, affine=True):
    bn = nn.BatchNorm2d(chs, eps=1e-3, affine=affine).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.2, 2.)
        if affine:
            bn.weight.normal_(1, 0.3)
            bn.bias.normal_(0, 0.3)
    return bn


@pytest.mark.parametrize('kwargs', [
    dict(kernel_size=3, padding=1, bias=True),
    dict(kernel_size=7, padding=3, groups=8, bias=False),  # depth-wise, no bias: the fused conv gains one
    dict(kernel_size=3, padding=3, dilation=3, stride=2, groups=2, bias=True),
])
@pytest.mark.parametrize('affine', [True, False])
def test_fuse_conv_bn_equals_the_pair(kwargs, affine):
    conv, bn = nn.Conv2d(8, 8, **kwargs).eval(), _bn(8, affine)
    x = torch.randn(2, 8, 11, 9)
    fused = fuse_conv_bn(conv, bn)
    assert fused.bias is not None and fused.stride == conv.stride and fused.dilation == conv.dilation
    with torch.no_grad():
        assert torch.allclose(fused(x), bn(conv(x)), atol=1e-5)
    assert conv.weight.shape == fused.weight.shape


def test_conv_norm_act_fuse_in_place_and_idempotent():
    m = ConvNormAct(4, 6, 3, act_layer=nn.ReLU).eval()
    m.bn = _bn(6)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        ref = m(x)
        assert m.fuse() is m and m.fuse() is m
        assert isinstance(m.bn, nn.Identity) and torch.allclose(m(x), ref, atol=1e-5)
    ln = m.bn = nn.LayerNorm(6)
    assert m.fuse().bn is ln  # only a BatchNorm folds: another norm is left as it is
    with pytest.raises(ValueError, match='running statistics'):
        fuse_conv_bn(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, track_running_stats=False))


@pytest.mark.parametrize('bias', [True, False])
def test_scale_conv(bias):
    conv = nn.Conv2d(3, 5, 3, bias=bias)
    scale = torch.rand(5) + 0.5
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        ref = conv(x) * scale.view(1, -1, 1, 1)
        assert torch.allclose(scale_conv_(conv, scale)(x), ref, atol=1e-6)
    with pytest.raises(ValueError, match='5 output channels'):
        scale_conv_(conv, torch.ones(4))
