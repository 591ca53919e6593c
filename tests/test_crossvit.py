"""CrossViT: parity with timm's crossvit_* (random non-trivial weights through our filter) at the official sizes and
at others, features per branch against timm's, the size rule, the cross-attention fold.

timm's CrossVit (like the official code) resamples every input to its branches' fixed sizes (240 / 224). This zoo
takes other sizes as they are: the S branch sees the image, the L branch the image resized by 224/240 to the
nearest multiple of 16, and each branch's position table is resampled to its grid. The oracle at another size is
therefore timm's model with its branch sizes set to that rule (:func:`_l_side`, written here from the documented
rule) and its tables resampled by timm's own ``resample_abs_pos_embed``; everything else is timm's code. At the
official sizes it is timm's model as it is.
"""
import copy
import math
from fractions import Fraction

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from _oracle import crossvit_official, load_converted, random_model, redraw_, timm_twins
from conftest import max_diff_f32
from timm.layers import resample_abs_pos_embed

from backbones.layers import CrossAttention, InplaceGELU
from backbones.models.crossvit import checkpoint_filter_fn

ORACLES = timm_twins('crossvit')
TINY = ORACLES['crossvit_tiny']
ATOL = 1e-5
SHALLOW = dict(depth=((1, 1),) * 3)  # three multi-scale blocks of one ViT block per branch: every code path
TIMM_SHALLOW = dict(depth=[[1, 1, 0]] * 3)  # the same in timm's notation (last entry: one fusion layer)


def _l_side(side: int, l_size: int = 224, img_size: int = 240) -> int:
    """The L branch's input side for an image side: scaled by ``l_size / img_size``, rounded half up to a
    multiple of 16 (the documented rule, computed exactly)."""
    return 16 * math.floor(Fraction(side * l_size, img_size * 16) + Fraction(1, 2))


def _timm_at(oracle: nn.Module, size, l_size: int = 224, img_size: int = 240) -> nn.Module:
    """timm's CrossVit ``oracle`` set up for an input of ``size``: branch sizes by the zoo's rule, each position
    table resampled from its trained grid by timm's ``resample_abs_pos_embed`` (in place, returns ``oracle``)."""
    sizes = [tuple(size), (_l_side(size[0], l_size, img_size), _l_side(size[1], l_size, img_size))]
    for b, (p, s) in enumerate(zip((12, 16), sizes)):
        embed = oracle.patch_embed[b]
        old = [embed.img_size[0] // p, embed.img_size[1] // p]
        pos = resample_abs_pos_embed(getattr(oracle, f'pos_embed_{b}').detach(), [s[0] // p, s[1] // p], old, 1)
        setattr(oracle, f'pos_embed_{b}', nn.Parameter(pos))
        embed.img_size = s
    oracle.img_size_scaled = sizes
    return oracle


def _max_diff(a, b, size, batch=2):
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        expected, got = a(x), b(x)
    assert expected.shape == got.shape
    return max_diff_f32(got, expected)


@pytest.fixture(scope='module')
def tiny():
    """(timm crossvit_tiny_240 with random non-trivial weights, crossvit_tiny holding them through our filter)."""
    oracle = random_model(TINY)
    return oracle, load_converted('crossvit_tiny', oracle.state_dict(), checkpoint_filter_fn)


@pytest.fixture(scope='module')
def shallow():
    oracle = random_model(TINY, **TIMM_SHALLOW)
    return oracle, load_converted('crossvit_tiny', oracle.state_dict(), checkpoint_filter_fn, **SHALLOW)


# ---------------------------------------------------------------- parity with timm

def test_parity_official_size(tiny):
    """crossvit_tiny at 240, in inference (the folded cross attention) and in training mode (the formula as the
    official code writes it; no dropout by default, so the outputs are deterministic)."""
    oracle, model = tiny
    assert _max_diff(oracle, model, (240, 240), batch=1) <= ATOL
    oracle.train(), model.train()
    try:
        assert _max_diff(oracle, model, (240, 240), batch=1) <= ATOL
    finally:
        oracle.eval(), model.eval()


@pytest.mark.parametrize('size', [
    (96, 144),  # non-square; L branch 96 x 128: the height is kept (an identity resize), the width shrinks
    (180, 132),  # L branch 176 x 128 (168 and 123.2, rounded half up to multiples of 16)
    (36, 48),  # small grids: S 3 x 4, L 2 x 3
])
def test_parity_other_sizes(shallow, size):
    oracle, model = shallow
    assert _max_diff(_timm_at(copy.deepcopy(oracle), size), model, size) <= ATOL


@pytest.mark.parametrize('name, size', [
    ('crossvit_9_dagger', (240, 240)),  # the three-conv patch embeddings, 4 heads
    ('crossvit_18_dagger_384', (408, 408)),  # a 384 fine-tune at its own size (L branch 384), 7 heads
    ('crossvit_18_dagger_384', (204, 144)),  # ... and elsewhere (its scale 384/408 = 16/17: L 192 x 128)
])
def test_parity_variants_reduced_depth(name, size):
    """Each variant's geometry (patch embedding, scale, heads) at one ViT block per branch and narrower widths (8
    channels per head), to stay cheap at 408."""
    narrow = dict(embed_dim=(32, 64) if '_9' in name else (56, 112))
    oracle = random_model(ORACLES[name], **TIMM_SHALLOW, **narrow)
    model = load_converted(name, oracle.state_dict(), checkpoint_filter_fn, **SHALLOW, **narrow)
    if name.endswith('_384'):
        oracle = _timm_at(oracle, size, l_size=384, img_size=408)
    else:
        oracle = _timm_at(oracle, size)
    assert _max_diff(oracle, model, size, batch=1) <= ATOL


def test_intermediates_equal_timms(tiny):
    """The features: every index (branch-major) is timm's tap, NCHW; the final features are timm's too."""
    oracle, model = tiny
    x = torch.randn(1, 3, 240, 240)
    with torch.no_grad():
        final_t, taps_t = oracle.forward_intermediates(x)
        final, taps = model.forward_intermediates(x)
        assert [t.shape for t in taps] == [t.shape for t in taps_t] == [(1, 96, 20, 20)] * 3 + [(1, 192, 14, 14)] * 3
        for ours, theirs in zip(taps + final, taps_t + final_t):
            assert max_diff_f32(ours, theirs) <= ATOL
        nlc = model.forward_intermediates(x, indices=[1, 4], output_fmt='NLC', norm=True, return_prefix_tokens=True,
                                          intermediates_only=True)
        normed = oracle.forward_intermediates(x, indices=[1, 4], norm=True, intermediates_only=True)
    assert [(t.shape, c.shape) for t, c in nlc] == [((1, 400, 96), (1, 1, 96)), ((1, 196, 192), (1, 1, 192))]
    for (t, _), theirs in zip(nlc, normed):
        assert max_diff_f32(t, theirs.flatten(2).transpose(1, 2)) <= ATOL


def test_timm_checkpoint_loads_through_timm_and_resizes(tmp_path):
    """timm's hub layout loads through timm's pretrained path; into a model built for 120 x 180 both tables are
    resampled once, giving what the 240 model computes at 120 x 180 on the fly."""
    from safetensors.torch import save_file
    oracle = random_model(TINY, **TIMM_SHALLOW)
    path = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in oracle.state_dict().items()}, str(path))
    kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SHALLOW)
    at240 = timm.create_model('crossvit_tiny', **kwargs).eval()
    assert _max_diff(oracle, at240, (240, 240), batch=1) <= ATOL
    resized = timm.create_model('crossvit_tiny', img_size=(120, 180), **kwargs).eval()
    assert [tuple(p.shape) for p in resized.pos_embed] == [(1, 1 + 10 * 15, 96), (1, 1 + 7 * 11, 192)]  # 112 x 176
    assert _max_diff(at240, resized, (120, 180), batch=1) <= 1e-6


# ---------------------------------------------------------------- the official layout

def test_official_checkpoint_converts(tmp_path):
    """An official-layout ``.pth`` (the released files are bare state dicts; a training checkpoint wraps it in
    ``{'model': ...}``) -> tools/convert.py's save_for_hf folder -> ``local-dir:``."""
    from backbones.convert import convert_checkpoint
    oracle = random_model(TINY, **TIMM_SHALLOW)
    ckpt = tmp_path / 'crossvit_tiny_224.pth'
    torch.save({'model': crossvit_official(oracle.state_dict()), 'epoch': 299}, ckpt)
    out = convert_checkpoint('crossvit_tiny', ckpt, tmp_path / 'out', model_kwargs=SHALLOW)
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert _max_diff(oracle, model, (240, 240), batch=1) <= ATOL


def test_structure_and_schedule_match_timm():
    """Blocks per branch, LayerNorm eps 1e-6 everywhere, qkv biases, and the stochastic-depth rate of every
    block and fusion layer equal timm's (the official schedule)."""
    ours = timm.create_model('crossvit_18_dagger', drop_path_rate=0.3, device='meta')
    theirs = timm.create_model(ORACLES['crossvit_18_dagger'], drop_path_rate=0.3, device='meta')
    assert [len(b) for b in ours.blocks[0].blocks] == [len(b) for b in theirs.blocks[0].blocks] == [1, 6]
    assert all(m.eps == 1e-6 for m in ours.modules() if isinstance(m, nn.LayerNorm))
    rates = lambda model: {n.replace('drop_path1', 'drop_path'): m.drop_prob for n, m in model.named_modules()
                           if type(m).__name__ == 'DropPath'}
    assert rates(ours) == rates(theirs) and any('fusion' in n for n in rates(ours))
    assert ours.blocks[0].fusion[0].attn.wk.bias is not None and ours.blocks[0].blocks[1][0].attn.qkv.bias is not None


def test_pretrained_cfgs_point_at_timm_weights():
    """(Preprocessing as timm's: tests/test_checkpoint_contract.py.) Token model: no pool size, any input size."""
    for ours, theirs in ORACLES.items():
        cfg = timm.models.get_pretrained_cfg(ours).to_dict()
        assert cfg['hf_hub_id'] == f'timm/{theirs}.in1k'
        assert cfg['pool_size'] is None and not cfg['fixed_input_size']


def test_count_is_the_papers_formula_and_inference_does_less():
    """The counter counts the cross attention as written (keys and values of every token), which is timm's figure
    (tests/test_counts.py); the folded inference path does fewer MACs, by the key / value projections."""
    from backbones.flops import MODULE_HANDLES, count
    model = timm.create_model('crossvit_tiny', depth=((1, 1),)).eval()  # one multi-scale block
    formula = count(model, input_size=(3, 96, 144)).macs
    key = 'backbones.layers.cross_attention.CrossAttention'
    entry = MODULE_HANDLES.pop(key)
    try:
        folded = count(model, input_size=(3, 96, 144)).macs
    finally:
        MODULE_HANDLES[key] = entry
    # K and V of 1 + 6 * 8 L tokens at 192 and of 1 + 8 * 12 S tokens at 96 are gone; W_k^T q and W_v of the
    # mixed token cost what the two projections cost for one token
    saved = 2 * (1 + 6 * 8) * 192 ** 2 + 2 * (1 + 8 * 12) * 96 ** 2 - 2 * 192 ** 2 - 2 * 96 ** 2
    attention = (1 + 6 * 8) * 192 * 2 + (1 + 8 * 12) * 96 * 2  # q.k and a.v over the heads' d-wide slices
    attention_folded = (1 + 6 * 8) * 192 * 3 * 2 + (1 + 8 * 12) * 96 * 3 * 2  # every one of the 3 heads C wide
    assert formula - folded == saved + attention - attention_folded


# ---------------------------------------------------------------- sizes

def test_branch_grids_follow_the_rule():
    model = timm.create_model('crossvit_tiny', device='meta')
    assert model.branch_grid_sizes((240, 240)) == [(20, 20), (14, 14)]  # official: L branch 224
    assert model.grid_size == [(20, 20), (14, 14)] and model.input_divisor == 12
    big = timm.create_model('crossvit_15_dagger_384', device='meta')
    assert big.branch_grid_sizes((408, 408)) == [(34, 34), (24, 24)]  # official: L branch 384
    for h, w in [(96, 144), (180, 132), (12, 12), (480, 360), (1008, 756)]:
        assert model.branch_grid_sizes((h, w)) == [(h // 12, w // 12), (_l_side(h) // 16, _l_side(w) // 16)]
        assert big.branch_grid_sizes((h, w))[1] == (_l_side(h, 384, 408) // 16, _l_side(w, 384, 408) // 16)
    assert [f['reduction'] for f in model.feature_info] == [12] * 3 + [17] * 3


def test_size_rule_and_set_input_size():
    model = timm.create_model('crossvit_tiny', **SHALLOW).eval()
    for bad in [(224, 224), (96, 100)]:
        with pytest.raises(ValueError, match='multiples of 12'):
            model(torch.randn(1, 3, *bad))
    with pytest.raises(ValueError, match='img_size sides must be at least 12 and multiples of 12'):
        timm.create_model('crossvit_tiny', img_size=250, device='meta')
    x = torch.randn(1, 3, 120, 96)
    with torch.no_grad():
        before = model(x)
    model.pos_embed[1].requires_grad_(False)
    model.set_input_size((120, 96))
    assert [tuple(p.shape) for p in model.pos_embed] == [(1, 1 + 10 * 8, 96), (1, 1 + 7 * 6, 192)]
    assert model.pos_embed[0].requires_grad and not model.pos_embed[1].requires_grad
    assert model.grid_size == [(10, 8), (7, 6)] and model._model_args['img_size'] == (120, 96)
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)
    with pytest.raises(ValueError, match='multiples of 12'):
        model.set_input_size(100)


def test_batch_size_zero():
    model = timm.create_model('crossvit_tiny', **SHALLOW).eval()
    with torch.no_grad():
        assert model(torch.randn(0, 3, 72, 96)).shape == (0, 1000)
        assert [t.shape for t in model.forward_intermediates(torch.randn(0, 3, 72, 96), intermediates_only=True)] \
            == [(0, 96, 6, 8)] * 3 + [(0, 192, 4, 6)] * 3


def test_features_only_default_and_pooling():
    """features_only: by default the last block of each branch (what the heads read), NCHW; pooling types."""
    feat = timm.create_model('crossvit_tiny', features_only=True, **SHALLOW).eval()
    assert feat.feature_info.out_indices == (2, 5)
    assert feat.feature_info.channels() == [96, 192] and feat.feature_info.reduction() == [12, 17]
    with torch.no_grad():
        assert [o.shape for o in feat(torch.randn(1, 3, 240, 240))] == [(1, 96, 20, 20), (1, 192, 14, 14)]
    model = timm.create_model('crossvit_tiny', global_pool='avg', num_classes=0, **SHALLOW).eval()
    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.allclose(model(x), torch.cat([f[:, 1:].mean(1) for f in feats], dim=1))
    with pytest.raises(ValueError, match="unknown global_pool '': valid are 'token', 'avg', 'max', 'avgmax'$"):
        timm.create_model('crossvit_tiny', global_pool='', device='meta')


# ---------------------------------------------------------------- layers

def _cross_attention_by_definition(m: CrossAttention, x: torch.Tensor) -> torch.Tensor:
    """The official formula: queries from the first tokens, keys and values of every token, per head."""
    B, N, C = x.shape
    n, h, d = m.num_query_tokens, m.num_heads, m.head_dim
    q = m.wq(x[:, :n]).reshape(B, n, h, d).transpose(1, 2)
    k = m.wk(x).reshape(B, N, h, d).transpose(1, 2)
    v = m.wv(x).reshape(B, N, h, d).transpose(1, 2)
    attn = ((q @ k.transpose(-2, -1)) * d ** -0.5).softmax(dim=-1)
    return m.proj((attn @ v).transpose(1, 2).reshape(B, n, C))


@pytest.mark.parametrize('num_query_tokens, qkv_bias', [(1, True), (3, False)])
def test_cross_attention_fold_matches_definition(num_query_tokens, qkv_bias):
    m = redraw_(CrossAttention(24, num_heads=3, qkv_bias=qkv_bias, num_query_tokens=num_query_tokens).double())
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    with torch.no_grad():
        expected = _cross_attention_by_definition(m, x)
        assert torch.allclose(m.eval()(x), expected, atol=1e-12)  # folded
        assert torch.allclose(m.train()(x), expected, atol=1e-12)  # the formula
        m.eval().fused_attn = False
        assert torch.allclose(m(x), expected, atol=1e-12)


def test_cross_attention_trains_every_parameter():
    m = CrossAttention(16, num_heads=2, qkv_bias=True, attn_drop=0.1).train()
    m(torch.randn(2, 5, 16)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())  # b_k too (its gradient is zero), as in the official code


def test_inplace_gelu():
    act = InplaceGELU()
    x = torch.randn(4, 7)
    expected = F.gelu(x)
    y = x.clone()
    with torch.no_grad():
        out = act(y)
    assert torch.equal(out, expected) and out.data_ptr() == y.data_ptr()  # in place in inference
    z = x.clone().requires_grad_()
    out = act(z)
    assert torch.equal(out, expected) and torch.equal(z, x)  # not in place under autograd
    out.sum().backward()
    assert z.grad is not None


# ---------------------------------------------------------------- compile, export, FX

def test_fx_traced_once_runs_at_other_sizes():
    """timm's FX feature extraction: one graph serves every size (the branch sizes are traced, not constants)."""
    from timm.models._features_fx import create_feature_extractor
    model = timm.create_model('crossvit_tiny', **SHALLOW).eval()
    fx = create_feature_extractor(model, return_nodes={'head.1': 'logits_l'})
    with torch.no_grad():
        for size in [(72, 96), (48, 36)]:
            x = torch.randn(1, 3, *size)
            feats = model.forward_features(x)
            assert torch.allclose(fx(x)['logits_l'], model.head[1](feats[1][:, 0]), atol=1e-6)


@pytest.mark.slow
def test_compile_fullgraph_dynamic_sizes():
    """One graph, no breaks, dynamic shapes: other sizes (the L-branch resize included) reuse it."""
    model = timm.create_model('crossvit_tiny', depth=((1, 1),) * 2, num_classes=5).eval()
    compiled = torch.compile(model, fullgraph=True, backend='eager', dynamic=True)
    with torch.no_grad():
        for size in [(72, 96), (48, 36), (240, 240)]:
            x = torch.randn(2, 3, *size)
            assert torch.allclose(compiled(x), model(x), atol=1e-6)


@pytest.mark.slow
def test_export_dynamic_batch_and_size():
    from torch.export import Dim, export
    model = timm.create_model('crossvit_tiny', depth=((1, 1),) * 2).eval()
    gh, gw, b = Dim('gh', min=2, max=64), Dim('gw', min=2, max=64), Dim('b', min=1, max=64)
    ep = export(model, (torch.randn(2, 3, 72, 96),), dynamic_shapes={'x': {0: b, 2: 12 * gh, 3: 12 * gw}})
    with torch.no_grad():
        for size in [(72, 96), (240, 240), (408, 180)]:
            x = torch.randn(3, 3, *size)
            assert torch.allclose(ep.module()(x), model(x), atol=1e-5)
