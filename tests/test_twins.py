"""Twins (PCPVT / SVT): parity with timm's twins_* (the official layout), the size rule,
the architecture's details that parity cannot see (LayerNorm eps), and the shared LSA / GSA layers."""
import pytest
import timm
import torch
from _oracle import assert_fx_stage_features, load_converted, random_model, timm_twins
from conftest import max_diff_f32

from backbones.layers.subsampled_attention import GlobalSubsampledAttention, LocallyGroupedAttention
from backbones.models.twins import checkpoint_filter_fn

ORACLES = timm_twins('twins')
# Reduced configs that timm's Twins and ours both take (same keyword names): every structural feature of the full
# nets (sub-sampling 8-4-2-1, PEG after block 0, SVT's LSA/GSA alternation, 7x7 windows), a fraction of the work.
REDUCED = {
    'twins_pcpvt_s': dict(embed_dims=(16, 32, 80, 128), depths=(2, 2, 2, 2)),
    'twins_svt_s': dict(embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 2)),
}
# 224 (stage maps divide by the 7x7 window), non-square 160x256 and 352 (~1.5x; 336 is not a multiple of the
# total stride 32, see test_size_rule): every SVT stage map then needs LSA padding (40x64 .. 11x11).
SIZES = [(224, 224), (160, 256), (352, 352)]


def _pair(name, **kwargs):
    """timm's model with random non-trivial weights, and ours holding them through checkpoint_filter_fn."""
    oracle = random_model(ORACLES[name], **kwargs)
    return oracle, load_converted(name, oracle.state_dict(), checkpoint_filter_fn, **kwargs)


def _max_diff(a, b, x):
    with torch.no_grad():
        return max_diff_f32(b(x), a(x))


# ---------------------------------------------------------------- parity with timm (= the official code)

@pytest.mark.parametrize('name', sorted(REDUCED))
def test_parity_reduced_at_every_size(name):
    oracle, model = _pair(name, **REDUCED[name])
    for size in SIZES:
        assert _max_diff(oracle, model, torch.randn(1, 3, *size)) <= 1e-5, size


# The registered smallest variants themselves: `-m slow` (the mapping is the reduced configs' one; what sets the
# full variants apart, shapes and per-block heads / windows / sub-sampling, is checked on meta below).
@pytest.mark.slow
@pytest.mark.parametrize('name,size', [
    pytest.param(n, s, id=f'{n}-{s[0]}x{s[1]}') for n in ['twins_pcpvt_s', 'twins_svt_s'] for s in SIZES])
def test_parity_full_variant(name, size):
    oracle, model = _pair(name)
    assert _max_diff(oracle, model, torch.randn(1, 3, *size)) <= 1e-5


def test_official_checkpoint_through_timm_loader(tmp_path):
    """An official-layout checkpoint ({'model': ...}, as the official training code saves it), loaded the way a user
    does (pretrained=True with a file) -> the oracle's logits."""
    kwargs = REDUCED['twins_svt_s']
    oracle = random_model(ORACLES['twins_svt_s'], **kwargs)
    path = tmp_path / 'alt_gvt_small.pth'
    torch.save({'model': oracle.state_dict(), 'epoch': 299}, path)
    model = timm.create_model('twins_svt_s', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **kwargs).eval()
    assert _max_diff(oracle, model, torch.randn(1, 3, 96, 64)) <= 1e-5


# ---------------------------------------------------------------- configs

@pytest.mark.parametrize('name', sorted(ORACLES))
def test_variant_config_equals_timm(name):
    """What shapes cannot show: heads, windows and the attention kind of every block, against timm's variant."""
    ours = [b.attn for s in timm.create_model(name, device='meta').stages for b in s.blocks]
    theirs = [b.attn for s in timm.create_model(ORACLES[name], device='meta').blocks for b in s]
    assert len(ours) == len(theirs)
    for a, t in zip(ours, theirs):
        assert a.num_heads == t.num_heads
        if isinstance(a, LocallyGroupedAttention):
            assert type(t).__name__ == 'LocallyGroupedAttn' and a.window_size == (t.ws, t.ws)
        else:
            assert type(t).__name__ == 'GlobalSubSampleAttn' and a.sr_ratio == t.sr_ratio


def test_pretrained_cfgs_point_at_timm_hub_weights():
    for name, timm_name in ORACLES.items():
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        assert cfg['hf_hub_id'] == f'timm/{timm_name}.in1k'
        assert (cfg['crop_pct'], cfg['interpolation'], cfg['license']) == (0.9, 'bicubic', 'apache-2.0')
        assert not cfg.get('fixed_input_size')


# ---------------------------------------------------------------- input sizes

def test_size_rule():
    model = timm.create_model('twins_svt_s', device='meta')
    for h, w in [(336, 336), (224, 240)]:  # timm's model runs there, dropping the last rows of some stages
        with pytest.raises(ValueError, match='multiples of 32'):
            model(torch.empty(1, 3, h, w, device='meta'))
    for h, w in [(32, 32), (32, 96), (448, 224)]:
        assert model.forward_features(torch.empty(1, 3, h, w, device='meta')).shape == (1, 512, h // 32, w // 32)


# ---------------------------------------------------------------- what parity cannot see

def test_architecture_details():
    """specs/twins.md pitfalls: LayerNorm eps 1e-5 in patch embeddings and GSA, 1e-6 in blocks and the final norm
    (too close for a 1e-5 logit check to tell apart); PEG after the first block only; LSA/GSA alternation."""
    svt = timm.create_model('twins_svt_s', device='meta')
    pcpvt = timm.create_model('twins_pcpvt_s', device='meta')
    for model in (svt, pcpvt):
        assert model.norm.eps == 1e-6
        for stage in model.stages:
            assert stage.downsample.norm.eps == 1e-5
            for j, block in enumerate(stage.blocks):
                assert block.norm1.eps == block.norm2.eps == 1e-6
                assert isinstance(block.peg, torch.nn.Identity) != (j == 0)
                if isinstance(block.attn, GlobalSubsampledAttention) and block.attn.norm is not None:
                    assert block.attn.norm.eps == 1e-5
    kinds = [[type(b.attn) for b in s.blocks] for s in svt.stages]
    assert kinds == [[LocallyGroupedAttention, GlobalSubsampledAttention] * (d // 2) for d in (2, 2, 10, 4)]
    assert all(type(b.attn) is GlobalSubsampledAttention for s in pcpvt.stages for b in s.blocks)
    assert [s.blocks[1].attn.sr_ratio for s in svt.stages] == [8, 4, 2, 1]


def test_lsa_windows_are_independent():
    """A change inside one 7x7 window leaves every other window's output untouched, also with padding."""
    torch.manual_seed(0)
    attn = LocallyGroupedAttention(16, 2, 7).eval()
    x = torch.randn(1, 10, 12, 16)  # padded to 14x14: 2x2 windows
    y = x.clone()
    y[0, 8, 9] += 1.  # window (1, 1)
    with torch.no_grad():
        a, b = attn(x), attn(y)
    assert a.shape == x.shape
    changed = (a - b).abs().amax(-1) > 0
    assert changed[0, 7:, 7:].any() and not changed[0, :7].any() and not changed[0, :, :7].any()


def test_gsa_without_subsampling_is_global_attention():
    torch.manual_seed(0)
    gsa = GlobalSubsampledAttention(16, 2, sr_ratio=1).eval()
    assert gsa.sr is None and gsa.norm is None
    x = torch.randn(2, 3, 5, 16)
    q, k, v = gsa.q(x.flatten(1, 2)), *gsa.kv(x.flatten(1, 2)).chunk(2, -1)
    heads = lambda t: t.unflatten(-1, (2, 8)).transpose(1, 2)
    attn = (heads(q) @ heads(k).transpose(-1, -2) * 8 ** -0.5).softmax(-1) @ heads(v)
    expected = gsa.proj(attn.transpose(1, 2).flatten(2)).view(2, 3, 5, 16)
    with torch.no_grad():
        assert torch.allclose(gsa(x), expected, atol=1e-6)


# ---------------------------------------------------------------- tracing at a padded size

def test_fx_feature_extraction_at_padded_size():
    model = timm.create_model('twins_svt_s', **REDUCED['twins_svt_s']).eval()
    assert_fx_stage_features(model, torch.randn(1, 3, 64, 96))  # stage maps 16x24 .. 2x3: all padded to multiples of 7
