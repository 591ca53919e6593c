"""ConViT: parity with timm's convit_* (random non-trivial weights through our filter) at 224 and at other sizes,
the official counts of the "+" variants, GPSA against its definition, the class token's late entry, any-size input.

timm's ConViT only runs at its construction size and only on square grids (it derives the grid side as
sqrt(N)). The oracle at another size is therefore timm's model built with ``img_size=(H, W)`` holding the position
embedding resampled by timm's own ``resample_abs_pos_embed`` (what our model does on the fly), and, for non-square
grids, GPSA's relative-offset buffer filled from the paper's definition (:func:`_rel_indices`; checked against
timm's own buffer on square grids). Everything else is timm's code.
"""
import pytest
import timm
import torch
from _oracle import assert_same_layout, load_converted, meta_model, random_model, redraw_, timm_twins
from conftest import max_diff_f32
from timm.layers import resample_abs_pos_embed
from timm.models.convit import GPSA as TimmGPSA
from timm.models.convit import ConVit

import backbones
from backbones.models.convit import GPSA, checkpoint_filter_fn

ORACLES = timm_twins('convit')
TINY = ORACLES['convit_ti']
PLUS_HEADS = {'convit_ti_plus': 4, 'convit_s_plus': 9, 'convit_b_plus': 16}  # 64 channels per head
ATOL = 1e-5


def _rel_indices(gh: int, gw: int) -> torch.Tensor:
    """``[1, N, N, 3]``: (dx, dy, dx^2 + dy^2) of key minus query on a row-major gh x gw grid (the paper's
    relative positional encoding)."""
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing='ij')
    ys, xs = ys.flatten().float(), xs.flatten().float()
    dx, dy = xs[None, :] - xs[:, None], ys[None, :] - ys[:, None]
    return torch.stack([dx, dy, dx * dx + dy * dy], dim=-1)[None]


def _timm_at(timm_name, state_dict, size, **kwargs):
    """timm's model for input ``size``: built there, the 14x14 table resampled by timm, offsets of that grid."""
    gh, gw = size[0] // 16, size[1] // 16
    model = timm.create_model(timm_name, img_size=size, device='meta', **kwargs).to_empty(device='cpu')
    sd = dict(state_dict)
    sd['pos_embed'] = resample_abs_pos_embed(sd['pos_embed'], [gh, gw], [14, 14], num_prefix_tokens=0)
    model.load_state_dict(sd)
    for m in model.modules():
        if hasattr(m, 'rel_indices'):
            m.rel_indices = _rel_indices(gh, gw) if gh != gw else m.get_rel_indices(gh * gw)
    return model.eval()


def _max_diff(a, b, size, batch=2):
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        expected, got = a(x), b(x)
    assert expected.shape == got.shape
    return max_diff_f32(got, expected)


SHALLOW = dict(depth=3, local_up_to_layer=2)  # 2 GPSA blocks, the class token, 1 MHSA block: every code path


@pytest.fixture(scope='module')
def tiny():
    """(timm convit_tiny with random non-trivial weights, convit_ti holding them through checkpoint_filter_fn)."""
    oracle = random_model(TINY)
    return oracle, load_converted('convit_ti', oracle.state_dict(), checkpoint_filter_fn)


@pytest.fixture(scope='module')
def shallow():
    oracle = random_model(TINY, **SHALLOW)
    return oracle, load_converted('convit_ti', oracle.state_dict(), checkpoint_filter_fn, **SHALLOW)


# ---------------------------------------------------------------- parity with timm

@pytest.mark.parametrize('size', [(224, 224), (160, 288)])
def test_parity_full_depth(tiny, size):
    """convit_ti at 224 and on a non-square 10x18 grid (GPSA offsets of that grid, the table resampled to it)."""
    oracle, model = tiny
    if size != (224, 224):
        oracle = _timm_at(TINY, oracle.state_dict(), size)
    assert _max_diff(oracle, model, size, batch=1) <= ATOL


@pytest.mark.parametrize('size', [
    (320, 320),  # a larger square grid, 20x20 (timm's own offsets)
    (64, 96),  # a small non-square grid, 4x6
    (96, 32),  # a narrow 6x2 grid
])
def test_parity_other_sizes(shallow, size):
    oracle, model = shallow
    assert _max_diff(_timm_at(TINY, oracle.state_dict(), size, **SHALLOW), model, size) <= ATOL


def test_reference_offsets_equal_timms():
    """The offsets the non-square oracle uses are timm's own on every square grid."""
    gpsa = TimmGPSA(8, num_heads=4)
    for side in (1, 4, 14):
        assert torch.equal(gpsa.get_rel_indices(side * side), _rel_indices(side, side))


@pytest.mark.parametrize('name', ['convit_s', 'convit_b'])
def test_parity_wider_variants_reduced_depth(name):
    """S (9 heads) and B (16 heads) at 3 blocks (2 GPSA + 1 MHSA) on a 4x6 grid: the variants' widths, cheap."""
    oracle = random_model(ORACLES[name], **SHALLOW)
    model = load_converted(name, oracle.state_dict(), checkpoint_filter_fn, **SHALLOW)
    assert _max_diff(_timm_at(ORACLES[name], oracle.state_dict(), (64, 96), **SHALLOW), model, (64, 96)) <= ATOL


def test_timm_checkpoint_loads_through_timm_and_resizes(tmp_path):
    """timm's hub weights (= the official layout) load through timm's pretrained path; into a 96 x 128 model the
    14x14 table is resampled once, giving what the 224 model computes at 96 x 128 on the fly."""
    from safetensors.torch import save_file
    oracle = random_model(TINY, **SHALLOW)
    path = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in oracle.state_dict().items()}, str(path))
    kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SHALLOW)
    at224 = timm.create_model('convit_ti', **kwargs).eval()
    assert _max_diff(oracle, at224, (224, 224), batch=1) <= ATOL
    resized = timm.create_model('convit_ti', img_size=(96, 128), **kwargs).eval()
    assert resized.pos_embed.shape == (1, 6 * 8, 192)
    assert _max_diff(at224, resized, (96, 128), batch=1) <= 1e-6


# ---------------------------------------------------------------- the official layout and counts

@pytest.mark.parametrize('name', sorted(PLUS_HEADS))
def test_plus_variants_official_keys_map_and_params_equal(name):
    """The official facebookresearch/convit layout is timm's (the official model keeps its offsets out of the state
    dict). The variants with timm twins are in the checkpoint contract; the "+" ones (64-d heads) are timm's ConVit
    class with their official arguments."""
    official = ConVit(embed_dim=64, num_heads=PLUS_HEADS[name], local_up_to_layer=10, device='meta').state_dict()
    model = meta_model(name)
    assert_same_layout(checkpoint_filter_fn(official, model), model.state_dict())
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(v.numel() for v in official.values()) == backbones.get_variant_info(name).params


def test_official_checkpoint_converts(tmp_path):
    """An official-layout ``.pth`` (here a DeiT-style ``{'model': ...}`` training checkpoint; the released files are
    the bare state dict, see the key test above) -> tools/convert.py's save_for_hf folder -> ``local-dir:``."""
    from backbones.convert import convert_checkpoint
    oracle = random_model(TINY, **SHALLOW)
    ckpt = tmp_path / f'{TINY}.pth'
    torch.save({'model': oracle.state_dict(), 'epoch': 299}, ckpt)
    out = convert_checkpoint('convit_ti', ckpt, tmp_path / 'out', model_kwargs=SHALLOW)
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert _max_diff(oracle, model, (224, 224), batch=1) <= ATOL


def test_structure_and_init_match_timm():
    """Blocks 0-9 GPSA, 10-11 MHSA, LayerNorm eps 1e-6, no q/k/v bias; the locality init equals timm's."""
    ours = timm.create_model('convit_s', device='meta')
    assert [type(b.attn).__name__ for b in ours.blocks] == ['GPSA'] * 10 + ['Attention'] * 2
    assert ours.prefix_at == 10 and ours.norm.eps == 1e-6 and ours.blocks[0].norm1.eps == 1e-6
    assert ours.blocks[0].attn.qk.bias is None and ours.blocks[11].attn.qkv.bias is None
    for heads in (4, 9):
        theirs = ConVit(embed_dim=8, num_heads=heads, depth=1, local_up_to_layer=1, locality_strength=0.7)
        model = timm.create_model('convit_ti', embed_dim=8 * heads, num_heads=heads, depth=2, local_up_to_layer=1,
                                  locality_strength=0.7)
        t, o = theirs.blocks[0].attn, model.blocks[0].attn
        assert torch.equal(o.pos_proj.weight, t.pos_proj.weight) and torch.equal(o.v.weight, t.v.weight)
        assert torch.equal(o.gating_param, t.gating_param)


def test_pretrained_cfgs_point_at_timm_weights():
    """(Preprocessing as timm's: tests/test_checkpoint_contract.py.) Token model: no pool size, any input size."""
    for ours, theirs in ORACLES.items():
        cfg = timm.models.get_pretrained_cfg(ours).to_dict()
        assert cfg['hf_hub_id'] == f'timm/{theirs}.fb_in1k'
        assert cfg['pool_size'] is None and not cfg['fixed_input_size']
    assert not timm.list_models('convit_*_plus', pretrained=True)


def test_count_agrees_with_flop_counter_mode():
    """Our counter sees every matmul-like MAC torch's FlopCounterMode sees (linears, convs, GPSA's row / column
    matmuls), plus the fused attention, which FlopCounterMode misses on CPU: B * heads * N^2 * 2d per call."""
    from torch.utils.flop_counter import FlopCounterMode

    from backbones.flops import count
    model = timm.create_model('convit_ti', **SHALLOW).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.randn(1, 3, 64, 96))
    ours = count(model, input_size=(3, 64, 96)).by_operator
    assert ours['conv'] + ours['linear'] + ours['matmul'] == fc.get_total_flops() / 2
    assert ours['matmul'] > 0
    n = 4 * 6  # patch tokens; the MHSA block also sees the class token
    assert ours['scaled_dot_product_attention'] == 2 * (4 * n * n * 2 * 48) + 4 * (n + 1) ** 2 * 2 * 48


# ---------------------------------------------------------------- GPSA

def _gpsa_by_definition(m: GPSA, x: torch.Tensor) -> torch.Tensor:
    """GPSA as the paper / official code define it, on a [B, H, W, C] grid with full N x N maps (pos_proj bias
    included)."""
    B, H, W, C = x.shape
    h, d = m.num_heads, C // m.num_heads
    t = x.reshape(B, H * W, C)
    q, k = m.qk(t).reshape(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)
    v = m.v(t).reshape(B, -1, h, d).transpose(1, 2)
    content = (q @ k.transpose(-2, -1) * d ** -0.5).softmax(-1)
    positional = m.pos_proj(_rel_indices(H, W).to(x.dtype)).permute(0, 3, 1, 2).softmax(-1)
    g = torch.sigmoid(m.gating_param).view(1, h, 1, 1)
    attn = (1 - g) * content + g * positional
    attn = attn / attn.sum(-1, keepdim=True)
    return m.proj((attn @ v).transpose(1, 2).reshape(B, H, W, C))


@pytest.mark.parametrize('fused', [True, False])
def test_gpsa_matches_definition(fused):
    """The separable positional attention and the SDPA content term equal the paper's N x N formula."""
    m = redraw_(GPSA(24, num_heads=4).double())
    with torch.no_grad():
        m.pos_proj.bias.normal_()
        m.gating_param.normal_()
    m.fused_attn = fused
    x = torch.randn(2, 5, 7, 24, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(m(x), _gpsa_by_definition(m, x), atol=1e-12)


def test_gpsa_attention_dropout_uses_the_official_maps():
    """In training with attention dropout, dropout acts on the mixed N x N maps (the official formula)."""
    m = GPSA(16, num_heads=4, attn_drop=0.5).train()
    x = torch.randn(1, 3, 3, 16)
    torch.manual_seed(3)
    a = m(x)
    torch.manual_seed(3)
    m.attn_drop.p = 0.
    assert not torch.allclose(a, m(x))


# ---------------------------------------------------------------- the class token and sizes

def test_class_token_joins_after_the_gpsa_blocks():
    model = timm.create_model('convit_ti', depth=4, local_up_to_layer=2).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        taps = model.forward_intermediates(x, output_fmt='NLC', return_prefix_tokens=True, intermediates_only=True)
        feats = model.forward_features(x)
    assert [p.shape[1] for _, p in taps] == [0, 0, 1, 1]
    assert all(t.shape == (2, 24, 192) for t, _ in taps)
    assert feats.shape == (2, 25, 192)
    model.prune_intermediate_layers([1])  # before the class token: it goes, with the token-pooled head
    assert model.cls_token is None and model.num_prefix_tokens == 0 and model.global_pool == ''
    with torch.no_grad():
        assert model(x).shape == (2, 24, 192)


def test_size_rule_and_set_input_size():
    model = timm.create_model('convit_ti', depth=2, local_up_to_layer=1).eval()
    for bad in [(72, 64), (64, 100)]:
        with pytest.raises(ValueError, match='multiples of 16'):
            model(torch.randn(1, 3, *bad))
    with pytest.raises(ValueError, match='img_size sides must be at least 16 and multiples of 16'):
        timm.create_model('convit_ti', img_size=200, device='meta')
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        before = model(x)
    model.pos_embed.requires_grad_(False)
    model.set_input_size((96, 64))
    assert model.pos_embed.shape == (1, 24, 192) and not model.pos_embed.requires_grad
    assert model.grid_size == (6, 4) and model._model_args['img_size'] == (96, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)
    with pytest.raises(ValueError, match='multiples of 16'):
        model.set_input_size(100)


def test_batch_size_zero():
    model = timm.create_model('convit_ti', depth=2, local_up_to_layer=1).eval()
    with torch.no_grad():
        assert model(torch.randn(0, 3, 64, 80)).shape == (0, 1000)


def test_fx_traced_once_runs_at_other_sizes():
    """timm's FX feature extraction traces GPSA's offsets from the traced shapes, so one graph serves every grid."""
    from timm.models._features_fx import create_feature_extractor
    model = timm.create_model('convit_ti', **SHALLOW).eval()
    fx = create_feature_extractor(model, return_nodes={'blocks.0': 'gpsa', 'norm': 'out'})
    with torch.no_grad():
        for size in [(64, 96), (48, 32)]:
            x = torch.randn(1, 3, *size)
            got = fx(x)
            tap = model.forward_intermediates(x, indices=[0], output_fmt='NLC', intermediates_only=True)[0]
            assert torch.allclose(got['gpsa'].flatten(1, 2), tap, atol=1e-6)
            assert torch.allclose(got['out'], model.forward_features(x), atol=1e-6)


@pytest.mark.slow
def test_compile_fullgraph_dynamic_sizes():
    """One graph, no breaks, dynamic shapes: other grids reuse it with the same numbers."""
    model = timm.create_model('convit_ti', depth=2, local_up_to_layer=1, num_classes=5).eval()
    compiled = torch.compile(model, fullgraph=True, backend='eager', dynamic=True)
    with torch.no_grad():
        for size in [(64, 96), (48, 32)]:
            x = torch.randn(2, 3, *size)
            assert torch.allclose(compiled(x), model(x), atol=1e-6)


@pytest.mark.slow
def test_export_dynamic_batch_and_size():
    from torch.export import Dim, export
    model = timm.create_model('convit_ti', depth=2, local_up_to_layer=1).eval()
    gh, gw, b = Dim('gh', min=2, max=64), Dim('gw', min=2, max=64), Dim('b', min=1, max=64)
    ep = export(model, (torch.randn(2, 3, 64, 96),), dynamic_shapes={'x': {0: b, 2: 16 * gh, 3: 16 * gw}})
    with torch.no_grad():
        for size in [(64, 96), (224, 160)]:
            x = torch.randn(3, 3, *size)
            assert torch.allclose(ep.module()(x), model(x), atol=1e-5)
