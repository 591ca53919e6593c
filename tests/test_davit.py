"""DaViT: parity with timm's davit_* (random non-trivial weights through our filter), the official layout,
the channel attention against its definition, any-size input."""

import pytest
import timm
import torch
from _oracle import davit_official, flop_counter_macs, load_converted, random_model, timm_twin
from conftest import max_diff_f32

import backbones
from backbones.flops import count
from backbones.layers.channel_attention import ChannelAttention
from backbones.models.davit import checkpoint_filter_fn

ORACLES = {  # ours -> (timm entrypoint, kwargs making it the same network)
    n: (timm_twin(n), backbones.get_variant_info(n).timm_twin_kwargs) for n in backbones.list_models(family='davit')}
TINY = timm_twin('davit_t')
# reduced widths (heads of 8 channels) given to both timm and ours: cheap full-depth forwards
NARROW = dict(embed_dims=(16, 32, 64, 128), num_heads=(2, 4, 8, 16))
ATOL = 1e-5


def _max_diff(oracle, model, size):
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected, got = oracle(x), model(x)
    assert expected.shape == got.shape
    return max_diff_f32(got, expected)


# ---------------------------------------------------------------- parity with timm's davit_* (timm layout)

def _pair(name, **kwargs):
    """(timm oracle with random non-trivial weights, ours holding them through checkpoint_filter_fn)."""
    timm_name, timm_kwargs = ORACLES[name]
    oracle = random_model(timm_name, **timm_kwargs, **kwargs)
    return oracle, load_converted(name, oracle.state_dict(), checkpoint_filter_fn, **kwargs)


def test_parity_davit_t_224():
    assert _max_diff(*_pair('davit_t'), (224, 224)) <= ATOL


@pytest.fixture(scope='module')
def narrow_t():
    return _pair('davit_t', **NARROW)


@pytest.mark.parametrize('size', [
    (160, 224),  # non-square: stage maps 40x56 .. 5x7, windows pad
    (336, 336),  # 1.5x the default: 84 .. 11 (the last downsample pads 21 -> 22), windows pad
    (100, 75),  # odd sides: the stem and the stride-2 convs zero-pad too
])
def test_parity_davit_t_reduced_width(narrow_t, size):
    """davit_t's depths, widths 16..128 (heads of 8 channels): the same code paths at a fraction of the cost."""
    assert _max_diff(*narrow_t, size) <= ATOL


@pytest.mark.parametrize('size', [(384, 384), (136, 200)])
def test_parity_window12_reduced_width(size):
    """davit_l's window 12 (timm: davit_large with window_size=12), reduced widths and depths."""
    oracle, model = _pair('davit_l', depths=(1, 1, 1, 1), **NARROW)
    assert oracle.stages[0].blocks[0][0].window_size == model.stages[0].blocks[0][0].window_size == (12, 12)
    assert _max_diff(oracle, model, size) <= ATOL


def test_timm_checkpoint_file_loads_through_timm(tmp_path):
    """timm's hub weights (timm layout, e.g. timm/davit_tiny.msft_in1k) load through timm's own pretrained path."""
    from safetensors.torch import save_file
    oracle = random_model(TINY, **NARROW)
    path = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in oracle.state_dict().items()}, str(path))
    model = timm.create_model('davit_t', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **NARROW)
    assert _max_diff(oracle, model.eval(), (64, 64)) <= ATOL


# ---------------------------------------------------------------- the official layout

def test_official_layout_parity():
    """An official checkpoint ({'state_dict': ...}, official key names) converts to the same logits."""
    oracle = random_model(TINY, **NARROW)
    official = davit_official(oracle.state_dict())
    assert 'main_blocks.2.1.0.cpe.1.proj.weight' in official and 'norms.weight' in official
    model = load_converted('davit_t', {'state_dict': official}, checkpoint_filter_fn, **NARROW)
    assert _max_diff(oracle, model, (64, 96)) <= ATOL


# ---------------------------------------------------------------- the channel attention

def _channel_attention_by_definition(m: ChannelAttention, x: torch.Tensor) -> torch.Tensor:
    """Spec §4 written out per group: A = softmax((k d^-1/2)^T v) (d x d), out = (A q^T)^T, then proj."""
    B, N, C = x.shape
    h, d = m.num_heads, C // m.num_heads
    q, k, v = m.qkv(x).split(C, dim=-1)
    out = torch.empty_like(q)
    for g in range(h):
        sl = slice(g * d, (g + 1) * d)
        for b in range(B):
            a = ((k[b, :, sl] * d ** -0.5).T @ v[b, :, sl]).softmax(dim=-1)
            out[b, :, sl] = (a @ q[b, :, sl].T).T
    return m.proj(out)


@pytest.mark.parametrize('fused', [True, False])
def test_channel_attention_matches_definition(fused):
    m = ChannelAttention(24, num_heads=3).double()
    m.fused_attn = fused
    x = torch.randn(2, 10, 24, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(m(x), _channel_attention_by_definition(m, x), atol=1e-12)
    with pytest.raises(ValueError, match='multiple of num_heads'):
        ChannelAttention(24, num_heads=5)


def test_channel_attention_counted():
    """Through SDPA the counter still sees the 2 * N * d * C MACs of the d x d maps (plus the two projections)."""
    m = ChannelAttention(32, num_heads=4).eval()
    N, C, d = 49, 32, 8

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, img):
            return self.m(img.flatten(2).transpose(1, 2))

    w = Wrap()
    w.pretrained_cfg = dict(input_size=(C, 7, 7))
    res = count(w)
    assert res.by_operator.get('scaled_dot_product_attention') == 2 * N * d * C
    assert res.by_operator.get('linear') == 4 * N * C * C


def test_count_agrees_with_flop_counter_mode():
    """Our counter's matmul-like MACs equal torch's FlopCounterMode / 2 on a whole (reduced-width) DaViT."""
    model = timm.create_model('davit_t', depths=(1, 1, 1, 1), **NARROW).eval()
    x = torch.randn(1, 3, 64, 96)
    ours = count(model, input_size=(3, 64, 96)).by_operator
    matmul = sum(v for k, v in ours.items() if k in ('conv', 'linear', 'matmul', 'bmm', 'scaled_dot_product_attention'))
    assert matmul == pytest.approx(flop_counter_macs(model, x), rel=1e-3)
    assert ours['scaled_dot_product_attention'] > 0


# ---------------------------------------------------------------- structure and sizes

def test_davit_l_is_the_official_384_config():
    model = timm.create_model('davit_l', device='meta')
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 384, 384) and cfg['pool_size'] == (12, 12)
    assert all(b[0].window_size == (12, 12) for s in model.stages for b in s.blocks)
    assert timm.create_model('davit_t', device='meta').stages[3].blocks[0][0].window_size == (7, 7)


def test_pretrained_cfgs_point_at_timm_weights():
    """(Preprocessing as timm's: tests/test_checkpoint_contract.py.) T/S/B have weights, L/H/G none."""
    assert timm.list_pretrained('davit_[tsblhg]') == ['davit_b.msft_in1k', 'davit_s.msft_in1k', 'davit_t.msft_in1k']


def test_drop_path_is_official_per_half_block():
    """Linear over all 2 * sum(depths) half blocks (spatial and channel blocks get their own rates)."""
    model = timm.create_model('davit_t', drop_path_rate=0.22, device='meta')
    rates = [getattr(h.drop_path1, 'drop_prob', 0.) for s in model.stages for b in s.blocks for h in b]
    expected = torch.linspace(0, 0.22, 12).tolist()
    assert rates == pytest.approx(expected, abs=1e-6)


def test_any_input_size():
    """Every size is accepted (as the official code): feature maps are ceil(side / stride)."""
    model = timm.create_model('davit_t', features_only=True, **NARROW).eval()
    with torch.no_grad():
        for h, w in [(33, 70), (7, 9)]:
            feats = model(torch.randn(1, 3, h, w))
            assert [f.shape[-2:] for f in feats] == [(-(-h // r), -(-w // r)) for r in (4, 8, 16, 32)]
    with pytest.raises(ValueError, match='expects 3 input channels'):
        model(torch.randn(1, 1, 64, 64))


def test_unpooled_head_normalizes_channels():
    """reset_classifier(0, '') keeps the head LayerNorm, applied over the channels at every position."""
    model = timm.create_model('davit_t', **NARROW).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        model.reset_classifier(0, '')
        out = model(x)
    norm = model.head.norm
    ref = torch.nn.functional.layer_norm(feats.permute(0, 2, 3, 1), (128,), norm.weight, norm.bias, norm.eps)
    assert torch.allclose(out, ref.permute(0, 3, 1, 2), atol=1e-6)
