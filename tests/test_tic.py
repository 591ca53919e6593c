"""TiC / MSA-Conv: the operator against the official block (fixtures) and an unfold reference written here, its
gradients, its MAC count; the (reconstructed) network's size beside Swin, input sizes and its two mechanisms."""
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import backbones
from backbones.flops import MODULE_HANDLES, count
from backbones.layers import MSAConv2d, MSAConvAttention, msa_conv_av, msa_conv_qk
from backbones.models.tic import TiCAttention, cyclic_shift

FIXTURES = Path(__file__).parent / 'fixtures' / 'tic'


# ---------------------------------------------------------------- an independent reference: the unfold formulation

def _unfold(x, kernel, dilation):
    """[B, C, H, W] -> [B, C, kh*kw, H, W]: every window tap, zero outside the image (what the official im2col
    kernels gather)."""
    (kh, kw), (dh, dw) = kernel, dilation
    B, C, H, W = x.shape
    cols = F.unfold(x, (kh, kw), dilation=(dh, dw), padding=(dh * (kh - 1) // 2, dw * (kw - 1) // 2))
    return cols.view(B, C, kh * kw, H, W)


def ref_attention(q, k, v, kernel, dilation=(1, 1), heads=1, value_kernel=None):
    """Official Q.K op -> * scale -> softmax over the taps (padded taps NOT masked) -> official A.V op, per head."""
    value_kernel = value_kernel or kernel
    d = q.shape[1] // heads
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        logits = (q[:, sl].unsqueeze(2) * _unfold(k[:, sl], kernel, dilation)).sum(1) * d ** -0.5  # [B, T, H, W]
        attn = logits.softmax(dim=1)
        outs.append((attn.unsqueeze(1) * _unfold(v[:, sl], value_kernel, dilation)).sum(2))
    return torch.cat(outs, dim=1)


def ref_block(m: MSAConv2d, x):
    """The official ``MSA_Conv_2d.forward`` on the reference ops (eval: no dropout)."""
    q, k, v = F.conv2d(x, m.qkv_conv.weight, m.qkv_conv.bias).chunk(3, dim=1)
    a = m.attn
    out = ref_attention(q, k, v, a.kernel_size, a.dilation, a.num_heads, a.value_kernel_size) + x
    return F.relu(F.conv2d(out, m.mlp.weight, m.mlp.bias, m.mlp.stride, m.mlp.padding))


def test_reference_is_the_official_formula():
    """The reference against the formula of the official op, written out with loops (tiny case, asymmetric
    window and dilation): A[t = i*kw + j, y, x] = sum_c Q[c, y, x] K[c, y - ph + i*d, x - pw + j*d]."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 3, 4, 3, dtype=torch.float64).unbind(0)
    kh, kw, d = 5, 1, 2
    ph, pw = d * (kh - 1) // 2, d * (kw - 1) // 2
    logits = torch.zeros(1, kh * kw, 4, 3, dtype=torch.float64)
    for i in range(kh):
        for j in range(kw):
            for y in range(4):
                for x in range(3):
                    yy, xx = y - ph + i * d, x - pw + j * d
                    if 0 <= yy < 4 and 0 <= xx < 3:
                        logits[0, i * kw + j, y, x] = (q[0, :, y, x] * k[0, :, yy, xx]).sum()
    ours = (q.unsqueeze(2) * _unfold(k, (kh, kw), (d, d))).sum(1)
    torch.testing.assert_close(ours, logits, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- parity with the official block (fixtures)

@pytest.mark.parametrize('fixture', ['tic_msaconv_c3_k3_o16_20x24', 'tic_msaconv_c3_k5d2_s2_o8_23x17_bias'])
def test_official_block_parity(fixture):
    meta = json.loads((FIXTURES / f'{fixture}.json').read_text())
    tensors = load_file(str(FIXTURES / f'{fixture}.safetensors'))
    official = {k[len('state_dict.'):]: v for k, v in tensors.items() if k.startswith('state_dict.')}
    m = MSAConv2d.from_official(**meta['config']).eval()
    m.load_state_dict(official, strict=True)  # the official key names, as they are
    assert sum(p.numel() for p in m.parameters()) == meta['num_params']
    with torch.no_grad():
        out = m(tensors['input'])
        ref = ref_block(m, tensors['input'])
    assert out.shape == tensors['logits'].shape
    assert (out - tensors['logits']).abs().max().item() <= meta['atol']
    assert (ref - tensors['logits']).abs().max().item() <= meta['atol']


def test_from_official_defaults():
    m = MSAConv2d.from_official(8, 4, 5)  # official MSA_Conv_2d(8, 4, 5): padding 1, dropout 0.1, no dense bias
    assert m.mlp.padding == (1, 1) and m.mlp.bias is None and m.attn.attn_drop.p == 0.1
    assert m.attn.num_heads == 1 and m.attn.scale == 8 ** -0.5
    assert m(torch.randn(1, 8, 9, 9)).shape == (1, 4, 7, 7)  # the official default shrinks a 5x5 conv's output


# ---------------------------------------------------------------- the operator on held-out-like configurations

ATTN_CASES = [  # C, heads, kernel, dilation, value kernel, H x W
    (3, 1, 3, 1, None, (20, 24)),
    (4, 1, (5, 1), 2, (1, 5), (9, 7)),  # official validation.py pairs a (5, 1) Q.K window with a (1, 5) A.V window
    (6, 2, (1, 3), 3, None, (5, 11)),
    (4, 4, 7, 1, None, (3, 3)),  # a window larger than the image; "depthwise" (one channel per head)
    (8, 2, 5, (2, 3), None, (13, 6)),
    (6, 3, 3, 2, None, (1, 1)),
]


@pytest.mark.parametrize('C,heads,kernel,dilation,value_kernel,size', ATTN_CASES)
def test_attention_matches_unfold_reference(C, heads, kernel, dilation, value_kernel, size):
    torch.manual_seed(0)
    attn = MSAConvAttention(C, kernel, dilation, heads, value_kernel_size=value_kernel)
    q, k, v = torch.randn(3, 2, C, *size, dtype=torch.float64).unbind(0)
    out = attn(q, k, v)
    ref = ref_attention(q, k, v, attn.kernel_size, attn.dilation, heads, attn.value_kernel_size)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize('kernel,dilation,size', [
    (3, 1, (6, 5)), ((5, 1), 2, (9, 4)), ((1, 3), 3, (2, 7)), (7, 2, (3, 3))])
def test_official_ops_match_reference(kernel, dilation, size):
    """The two official ops on their own: Q.K -> [B, kh*kw, H, W] logits, A.V -> [B, C, H, W] (no scale/softmax)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 5, *size, dtype=torch.float64).unbind(0)
    kernel2 = (kernel, kernel) if isinstance(kernel, int) else kernel
    logits = msa_conv_qk(q, k, kernel, dilation)
    torch.testing.assert_close(logits, (q.unsqueeze(2) * _unfold(k, kernel2, (dilation, dilation))).sum(1),
                               rtol=0, atol=1e-12)
    a = torch.randn_like(logits)
    torch.testing.assert_close(msa_conv_av(a, v, kernel, dilation),
                               (a.unsqueeze(1) * _unfold(v, kernel2, (dilation, dilation))).sum(2), rtol=0, atol=1e-12)


@pytest.mark.parametrize('cfg,size', [
    (dict(in_chs=4, out_chs=6, kernel_size=(3, 5), stride=2, dilation=2, padding=(1, 2), bias=True, num_heads=2),
     (11, 8)),
    (dict(in_chs=3, out_chs=5, kernel_size=5, stride=3, dilation=1, padding=0), (17, 13)),
    (dict(in_chs=2, out_chs=2, kernel_size=3, stride=(1, 2), dilation=3), (7, 10)),
])
def test_block_matches_reference(cfg, size):
    torch.manual_seed(0)
    m = MSAConv2d(**cfg).double().eval()  # float64 works (the official block upcasts to float32 and fails)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, cfg['in_chs'], *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref_block(m, x), rtol=0, atol=1e-12)


def test_padded_taps_are_not_masked():
    """With q = 0 every logit is 0, so the softmax is uniform over ALL kh*kw taps, the zero-padded ones included:
    with v = 1 a corner pixel gets 4/9, an edge pixel 6/9, an inner one 1 (masking would give 1 everywhere)."""
    out = MSAConvAttention(2, 3)(torch.zeros(1, 2, 4, 5), torch.randn(1, 2, 4, 5), torch.ones(1, 2, 4, 5))
    expected = torch.full((4, 5), 1.)
    expected[0, :] = expected[-1, :] = expected[:, 0] = expected[:, -1] = 6 / 9
    expected[0, 0] = expected[0, -1] = expected[-1, 0] = expected[-1, -1] = 4 / 9
    torch.testing.assert_close(out[0, 0], expected)


def test_gradients():
    """Autograd through the tap loops on the CPU (the official CPU backward raises): the same gradients as the
    unfold reference, and gradcheck on tiny double inputs."""
    torch.manual_seed(0)
    attn = MSAConvAttention(4, (3, 1), 2, num_heads=2, value_kernel_size=(1, 3))
    q, k, v = (torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.randn(1, 4, 4, 5, dtype=torch.float64)
    ours = torch.autograd.grad((attn(q, k, v) * w).sum(), (q, k, v))
    ref = torch.autograd.grad((ref_attention(q, k, v, (3, 1), (2, 2), 2, (1, 3)) * w).sum(), (q, k, v))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(attn, (q, k, v), fast_mode=True)
    m = MSAConv2d(2, 3, 3, stride=2, num_heads=2).double()
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), fast_mode=True)


def test_bad_configurations():
    with pytest.raises(ValueError, match='must be odd'):
        MSAConvAttention(4, 2)
    with pytest.raises(ValueError, match='must be odd'):
        MSAConv2d(4, 4, (3, 4))
    with pytest.raises(ValueError, match='multiple of num_heads'):
        MSAConvAttention(6, 3, num_heads=4)
    with pytest.raises(ValueError, match='as many taps'):
        MSAConvAttention(4, 3, value_kernel_size=5)


def test_macs_counted():
    """Q.K and A.V: C * kh*kw * H * W MACs each; the 1x1 qkv conv and the dense conv as convs. The unfold forward
    used while counting computes what the layer computes."""
    m = MSAConv2d(8, 16, 3, stride=2, dilation=2, num_heads=2).eval()
    res = count(m, input_size=(8, 10, 12))
    assert res.by_operator == {'msa_conv': 2 * 8 * 9 * 10 * 12, 'conv': 10 * 12 * 8 * 24 + 5 * 6 * 16 * 8 * 9}
    entry = MODULE_HANDLES['backbones.layers.msa_conv.MSAConvAttention']
    q, k, v = torch.randn(3, 2, 8, 7, 9).unbind(0)
    for attn in (m.attn, MSAConvAttention(8, (5, 1), 2, 4, value_kernel_size=(1, 5))):
        with torch.no_grad():
            torch.testing.assert_close(entry.count_forward(attn, q, k, v), attn(q, k, v))


# ---------------------------------------------------------------- the network (our reconstruction)

SWIN = {  # Swin-T/S/B: params of timm's models (counted on meta), GMACs of the Swin paper (arXiv 2103.14030 Tab. 1)
    'tic_tiny': ('swin_tiny_patch4_window7_224', 4.5),
    'tic_small': ('swin_small_patch4_window7_224', 8.7),
    'tic_base': ('swin_base_patch4_window7_224', 15.4),
}
SWIN_RTOL = 0.05  # our design choice: within 5 % of its Swin twin in both params and MACs (all are +1.5 .. +3.7 %)


@pytest.mark.parametrize('name', [
    'tic_tiny', pytest.param('tic_small', marks=pytest.mark.slow), pytest.param('tic_base', marks=pytest.mark.slow)])
def test_sized_beside_swin(name):
    swin, swin_gmacs = SWIN[name]
    swin_params = sum(p.numel() for p in timm.create_model(swin, device='meta').parameters())
    res = count(name)
    assert res.params == backbones.get_variant_info(name).params
    assert abs(res.params / swin_params - 1) <= SWIN_RTOL, (res.params, swin_params)
    assert abs(res.gmacs / swin_gmacs - 1) <= SWIN_RTOL, (res.gmacs, swin_gmacs)
    assert backbones.get_variant_info(name).gmacs is None  # no official figure exists


def _narrow():
    """tic_tiny at a third of its width (every mechanism on: pooled heads and shifted blocks in stages 2-4)."""
    return timm.create_model('tic_tiny', depths=(1, 2, 2, 2), dims=(32, 64, 128, 256), num_heads=(2, 4, 8, 16)).eval()


def test_any_input_size():
    """Every size works (strided layers pad, MSA-Conv keeps the size): stage maps are ceil(side / reduction)."""
    model = _narrow()
    with torch.no_grad():
        for h, w in [(65, 33), (7, 5), (2, 3), (1, 1)]:
            x = torch.randn(2, 3, h, w)
            final, feats = model.forward_intermediates(x)
            assert model.forward_head(final).shape == (2, 1000)
            for f, r in zip(feats, (4, 8, 16, 32)):
                assert f.shape[-2:] == (-(-h // r), -(-w // r))
        assert model(torch.randn(0, 3, 64, 64)).shape == (0, 1000)
    with pytest.raises(ValueError, match='expects 3 input channels'):
        model(torch.randn(1, 1, 32, 32))


def test_cyclic_shift():
    x = torch.arange(4 * 8 * 12, dtype=torch.float32).view(1, 4, 8, 12)
    out = cyclic_shift(x, [1, 1, 1, 1])  # groups 0-3: window centred 2 rows below / above, 3 columns right / left
    for g, (dy, dx) in enumerate([(2, 0), (-2, 0), (0, 3), (0, -3)]):
        for y, xx in [(0, 0), (7, 11), (3, 5)]:
            assert out[0, g, y, xx] == x[0, g, (y + dy) % 8, (xx + dx) % 12]
    assert torch.equal(cyclic_shift(x, [3, 1])[:, :3], cyclic_shift(x[:, :3], [3]))


def _support(attn, size=(12, 16), at=(5, 7)):
    """Input positions the attention output at ``at`` depends on (its receptive field), as a set of offsets."""
    x = torch.randn(1, attn.proj.in_channels, *size, dtype=torch.float64, requires_grad=True)
    attn.double()(x)[0, :, at[0], at[1]].sum().backward()
    ys, xs = torch.nonzero(x.grad[0].abs().sum(0)).unbind(1)
    return {(int(y) - at[0], int(x_) - at[1]) for y, x_ in zip(ys, xs)}


def test_mechanisms_receptive_fields():
    """Local heads see a 3x3 window; Inter-Pooling heads a hole-free 9x9 (3x3 taps of 3x3-pooled cells, dilation 3);
    the cyclic shift moves the four head groups' windows a quarter of the map down / up / right / left."""
    torch.manual_seed(0)
    square = {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert _support(TiCAttention(16, 2)) == square
    assert _support(TiCAttention(16, 2, pooled_heads=2)) == {(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)}
    shifted = _support(TiCAttention(16, 4, shift=True))  # map 12 x 16: quarter shifts of 3 rows / 4 columns
    windows = {(0, 0)}  # the query itself
    for cy, cx in [(3, 0), (-3, 0), (0, 4), (0, -4)]:
        windows |= {(cy + dy, cx + dx) for dy, dx in square}
    assert shifted == windows


def test_ablation_switches():
    m = timm.create_model('tic_tiny', inter_pool=False, cyclic_shift=False, device='meta')
    blocks = [b for s in m.stages for b in s.blocks]
    assert all(b.attn.pooled_attn is None and not b.attn.shift_chs for b in blocks)
    m = timm.create_model('tic_tiny', device='meta')
    for stage, heads in zip(m.stages, (3, 6, 12, 24)):
        for j, b in enumerate(stage.blocks):
            assert bool(b.attn.shift_chs) == (j % 2 == 1)  # every second block shifts
            assert (b.attn.local_attn.num_heads, b.attn.pooled_attn.num_heads) == (heads - heads // 2, heads // 2)


# ---------------------------------------------------------------- compile / export (slow)

@pytest.mark.slow
def test_torch_compile_fullgraph():
    model = _narrow()
    compiled = torch.compile(model, fullgraph=True, backend='eager', dynamic=True)
    with torch.no_grad():
        for shape in [(2, 3, 64, 96), (3, 3, 33, 71), (0, 3, 64, 64)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
def test_torch_export_dynamic():
    import torch.fx.experimental._config as fx_config
    from torch.export import Dim, export
    model = _narrow()
    # one program for sides in multiples of 8 from 40 (sizes 0/1 specialise: every stage map >= 2). At other sides
    # torch.export guards on the pooled attention's sizes (torch 2.14), so each needs its own export (README)
    dims = {0: Dim('batch', min=1, max=64), 2: 8 * Dim('h', min=5, max=256), 3: 8 * Dim('w', min=5, max=256)}
    with fx_config.patch(backed_size_oblivious=True):
        program = export(model, (torch.randn(2, 3, 64, 96),), dynamic_shapes=(dims,))
    with torch.no_grad():
        for shape in [(2, 3, 64, 96), (5, 3, 40, 136), (1, 3, 224, 224)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(program.module()(x), model(x))
