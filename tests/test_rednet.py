"""RedNet / involution: parity with the official code (fixtures), the operator. (Official keys and counts, refused
checkpoints: test_checkpoint_contract.py.)"""
import pytest
import timm
import torch
import torch.nn.functional as F
from _oracle import assert_official_logits, parity_fixture

from backbones.layers import Involution
from backbones.models.rednet import checkpoint_filter_fn


def _small_rednet(num_classes, device=None):
    """The fixtures' official config: depth 26, stem_channels 32, base_channels 16 (stage widths 64..512)."""
    return timm.create_model('rednet26', stem_chs=32, widths=(64, 128, 256, 512), num_classes=num_classes,
                             device=device)


# ---------------------------------------------------------------- parity with the official code

@pytest.mark.parametrize('fixture', ['rednet26_s32_b16_64x64', 'rednet26_s32_b16_32x96'])
def test_fixture_parity(fixture):
    meta, official, x, expected = parity_fixture('involution', fixture)
    model = _small_rednet(meta['config']['head']['num_classes'], device='meta')
    # an mmcls checkpoint: {'meta': ..., 'state_dict': {backbone.*, head.fc.*}}
    sd = checkpoint_filter_fn({'meta': {'epoch': 130}, 'state_dict': official}, model)
    model.load_state_dict(sd, assign=True)
    assert_official_logits(model, meta, x, expected)


# ---------------------------------------------------------------- the operator

def _involution_by_definition(m: Involution, x: torch.Tensor) -> torch.Tensor:
    """Spec §3.1 written out: kernel from avg-pooled x, then Y[n,c,i,j] = sum_ab W[n, g(c)K^2 + aK + b, i, j] Xp[...]"""
    k, s, gc = m.kernel_size, m.stride, m.group_channels
    z = F.avg_pool2d(x, s, s) if s > 1 else x
    bn = m.conv1.bn
    z = F.relu(F.batch_norm(F.conv2d(z, m.conv1.conv.weight), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            eps=bn.eps))
    w = F.conv2d(z, m.conv2.weight, m.conv2.bias)
    xp = F.pad(x, [(k - 1) // 2] * 4)
    b_, c_, _, _ = x.shape
    ho, wo = w.shape[-2:]
    y = torch.zeros(b_, c_, ho, wo, dtype=x.dtype)
    for c in range(c_):
        g = c // gc
        for i in range(ho):
            for j in range(wo):
                for a in range(k):
                    for b in range(k):
                        y[:, c, i, j] += w[:, g * k * k + a * k + b, i, j] * xp[:, c, i * s + a, j * s + b]
    return y


@pytest.mark.parametrize('chs,k,stride,size', [(32, 3, 1, (5, 6)), (32, 7, 1, (4, 5)), (32, 7, 2, (6, 4))])
def test_involution_matches_definition(chs, k, stride, size):
    torch.manual_seed(0)
    m = Involution(chs, k, stride).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
        m.conv1.bn.running_mean.normal_(0, 0.1)
        m.conv1.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, chs, *size, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        ref = _involution_by_definition(m, x)
    assert y.shape == (2, chs, -(-size[0] // stride), -(-size[1] // stride))
    assert torch.allclose(y, ref, atol=1e-10, rtol=1e-10)


def test_involution_channels_must_fill_groups():
    with pytest.raises(ValueError, match='multiple of group_channels'):
        Involution(24, 7)
    assert Involution(24, 7, group_channels=8).groups == 3
    with pytest.raises(AssertionError, match='multiples of the stride'):  # would broadcast a 1-row kernel map
        Involution(16, 7, stride=2)(torch.randn(1, 16, 3, 4))


# ---------------------------------------------------------------- input rules

def test_input_size_rule():
    model = timm.create_model('rednet26', device='meta')
    with pytest.raises(ValueError, match=r'ceil\(H/4\) and ceil\(W/4\) to be multiples of 8.*192 or 221'):
        model(torch.empty(1, 3, 200, 224, device='meta'))
    with pytest.raises(ValueError, match='multiples of 8'):
        model.forward_intermediates(torch.empty(1, 3, 64, 66, device='meta'))
    for h, w in [(221, 224), (29, 64), (32, 96)]:  # the official code takes every side in 32k-3 .. 32k
        assert model(torch.empty(1, 3, h, w, device='meta')).shape == (1, 1000)


def test_wrong_channel_count():
    model = timm.create_model('rednet26', device='meta')
    with pytest.raises(ValueError, match='expects 3 input channels'):
        model(torch.empty(1, 4, 64, 64, device='meta'))


# ---------------------------------------------------------------- tracing

def test_fx_feature_extraction_matches_eager():
    """FX keeps every involution tap (an in-place accumulation would be dropped by dead-code elimination)."""
    from timm.models._features_fx import create_feature_extractor
    model = _small_rednet(10).eval()
    x = torch.randn(1, 3, 32, 64)
    fx = create_feature_extractor(model, return_nodes=[info['module'] for info in model.feature_info])
    with torch.no_grad():
        got = list(fx(x).values())
        expected = model.forward_intermediates(x, intermediates_only=True)
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-6)
