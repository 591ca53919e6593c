"""What detection and segmentation frameworks take from a backbone, on the smallest variant of every family (reduced
depth, 64 px inputs): ``output_stride`` (dilated last stages), timm's feature levels (the twins' levels, count,
widths and strides), ``img_size`` and transformers' ``TimmBackbone`` (``AutoBackbone``) with all hidden states.

Oracles: timm's SKNet / Res2Net twins with the same weights and the same ``output_stride`` (their dilated features)
and timm's legacy SE-ResNeXt (its five levels);
timm's twins' ``feature_info`` (built on the meta device); for networks made of convolutions and per-pixel layers
only, the "atrous" identity itself: the dilated network's map, read every ``k``-th pixel, is the undilated network's
map (``k`` = the stride given up); and the undilated model for every level above the dilated stages.
"""
import pytest
import timm
import torch
from _oracle import load_converted, random_model
from _reduced import reduced_kwargs, reduced_model
from conftest import SMALL_MODELS, input_side
from timm.models._input import get_model_input_config
from transformers import TimmBackbone, TimmBackboneConfig

from backbones._registry import get_family, get_variant_info

# families that refuse output_stride 16 / 8, with a word of the reason their message gives
NO_DILATION = {'convit': 'single-resolution', 'crossvit': 'single-resolution', 'sequencer': '16 and 8 do not exist'}
# families built of convolutions and per-pixel layers only (no global pooling or attention over a partition of the
# map): dilating them must give exactly the undilated maps at the undilated positions
ATROUS_EXACT = {'parcnetv2', 'rapidnet', 'tic'}
# zoo model -> timm twin; the ResNet-like ones and MaxViT expose the stem's stride-2 map as level 0, as timm's do
TWINS = {
    'se_resnext50_32x4d': 'legacy_seresnext50_32x4d',
    'sknet50': 'skresnext50_32x4d',
    'res2next50_4s': 'res2next50',
    'maxvit_tiny': 'maxvit_tiny_tf_224',
    'davit_t': 'davit_tiny',
    'twins_svt_s': 'twins_svt_small',
    'sequencer2d_small': 'sequencer2d_s',
    'convit_ti': 'convit_tiny',
    'crossvit_tiny': 'crossvit_tiny_240',
}
# the families without a timm twin: whether the stem's stride-2 map is level 0 (the paper's / official encoder's
# stride-2 stage: RedNet's ResNet stem before the max-pool, MOAT's stem, deeplab2's 'stage1')
STEM_LEVEL = {'rednet26': True, 'tiny_moat_0_no_pe': True, 'biformer_tiny': False, 'rapidnet_ti': False,
              'parcnetv2_xt': False, 'tic_tiny': False}
# families with a size-dependent part take img_size (and set_input_size); Twins and Sequencer record it as timm's
# twins do; the others refuse it
IMG_SIZE = {'maxvit': 256, 'parcnetv2': 256, 'convit': 256, 'crossvit': 264, 'twins': 256, 'sequencer': 252}
SET_INPUT_SIZE = {'maxvit', 'parcnetv2', 'convit', 'crossvit'}
SIZE_RULE = {'convit', 'crossvit', 'twins', 'sequencer'}  # input sides must be multiples of a stride


def _family(name: str) -> str:
    return get_variant_info(name).family


def _image(model, side: int = 64) -> torch.Tensor:
    s = input_side(model, side)
    return torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))


def _taps(model, x):
    with torch.no_grad():
        return model.forward_intermediates(x, intermediates_only=True)


# ---------------------------------------------------------------- output_stride

@pytest.mark.parametrize('name', SMALL_MODELS)
def test_output_stride(name):
    """``output_stride=8`` (the last two stages dilate, the second one on an already dilated map): every level at
    stride ``min(r, 8)``; the levels above keep the undilated model's numbers; a purely convolutional family gives
    the undilated maps at every ``k``-th pixel."""
    family = _family(name)
    if family in NO_DILATION:
        with pytest.raises(ValueError, match=NO_DILATION[family]):
            timm.create_model(name, output_stride=8, device='meta')
        return
    base = reduced_model(name)
    dilated = reduced_model(name, output_stride=8)
    x = _image(base)
    ref, out = _taps(base, x), _taps(dilated, x)
    reductions = [info['reduction'] for info in base.feature_info]
    assert [info['reduction'] for info in dilated.feature_info] == [min(r, 8) for r in reductions]
    assert len(out) == len(ref)
    for r, a, b in zip(reductions, ref, out):
        assert tuple(b.shape[-2:]) == (-(-x.shape[-2] // min(r, 8)), -(-x.shape[-1] // min(r, 8)))
        if r <= 8:
            assert torch.equal(a, b)
        elif family in ATROUS_EXACT:
            k = r // 8
            torch.testing.assert_close(b[..., ::k, ::k], a, rtol=1e-4, atol=1e-5 * a.abs().max().item())
    with pytest.raises(ValueError, match='output_stride must be one of 8, 16, 32'):
        timm.create_model(name, output_stride=4, device='meta')


@pytest.mark.parametrize('name, twin, output_stride', [
    ('sknet50', 'skresnext50_32x4d', 16),
    ('res2next50_4s', 'res2next50', 8),
    ('res2net50_v1b', 'res2net50d', 16),  # the average-pool shortcut of a dilated stage, as timm pools
    ('se_resnext50_32x4d', 'legacy_seresnext50_32x4d', None),  # (timm's legacy SENets do not dilate)
])
def test_output_stride_equals_timm(name, twin, output_stride):
    """timm's (dilated) twin, its weights converted by our checkpoint_filter_fn: the same five maps, the stem's
    stride-2 map first."""
    from backbones.bench import calibrate_bn_
    depths = (1, 1, 1, 2)  # the last stage: a block after the one that trades its stride for dilation
    dilation = dict(output_stride=output_stride) if output_stride else {}
    oracle = random_model(twin, layers=list(depths), **dilation)
    calibrate_bn_(oracle, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    filter_fn = __import__(get_family(name).module, fromlist=['checkpoint_filter_fn']).checkpoint_filter_fn
    model = load_converted(name, oracle.state_dict(), filter_fn, depths=depths, **dilation)
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = oracle.forward_intermediates(x, intermediates_only=True)
        got = model.forward_intermediates(x, intermediates_only=True)
    assert [f.shape for f in got] == [f.shape for f in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * e.abs().max().item())


# ---------------------------------------------------------------- timm's feature levels

def _levels(model):
    return [(info['num_chs'], info['reduction']) for info in model.feature_info]


@pytest.mark.parametrize('name', sorted(TWINS))
def test_feature_levels_as_timm_twin(name):
    """The twin's levels (widths and strides), default ``out_indices`` and, for a detection config written for the
    twin (``out_indices=(1, 2, 3)`` / ``(1, 2, 3, 4)``), the same output shapes (meta device, the twin's size)."""
    twin = TWINS[name]
    assert _levels(timm.create_model(name, device='meta')) == _levels(timm.create_model(twin, device='meta'))
    ours = timm.create_model(name, features_only=True, device='meta')
    theirs = timm.create_model(twin, features_only=True, device='meta')
    assert list(ours.feature_info.out_indices) == [i % len(theirs.feature_info.info)
                                                   for i in theirs.feature_info.out_indices]
    num_levels = len(theirs.feature_info.info)
    if num_levels > 4:
        indices = (1, 2, 3, 4)
    elif num_levels == 4:
        indices = (1, 2, 3)
    else:
        indices = (0, num_levels - 1)  # CrossViT: one block of each branch
    size = timm.get_pretrained_cfg(twin).input_size[1:]
    x = torch.empty(1, 3, *size, device='meta')
    ours = timm.create_model(name, features_only=True, out_indices=indices, device='meta').eval()
    theirs = timm.create_model(twin, features_only=True, out_indices=indices, device='meta').eval()
    if _family(name) == 'sequencer':  # timm's LSTMs crawl on the meta device: the shapes its feature_info gives
        expected = [(1, c, -(-size[0] // r), -(-size[1] // r))
                    for c, r in zip(theirs.feature_info.channels(), theirs.feature_info.reduction())]
    else:
        expected = [f.shape for f in theirs(x)]
    assert [tuple(f.shape) for f in ours(x)] == [tuple(s) for s in expected]


@pytest.mark.parametrize('name', sorted(STEM_LEVEL))
def test_feature_levels_without_twin(name):
    model = timm.create_model(name, device='meta')
    stem = STEM_LEVEL[name]
    assert [r for _, r in _levels(model)] == ([2] if stem else []) + [4, 8, 16, 32]
    assert model.feature_info[0]['module'] == ('stem' if stem else 'stages.0')
    feat = timm.create_model(name, features_only=True, device='meta')
    assert feat.feature_info.out_indices == tuple(range(len(model.feature_info)))


@pytest.mark.parametrize('name', ['se_resnext50_32x4d', 'sknet50', 'res2next50_4s', 'rednet26', 'maxvit_tiny',
                                  'tiny_moat_0_no_pe'])
def test_prune_to_the_stem_level(name):
    """Level 0 alone, where it is the stem's map: every stage is pruned, the model returns the stem's map."""
    model = reduced_model(name)
    assert model.stem_feature
    x = _image(model)
    full = _taps(model, x)
    model.prune_intermediate_layers(indices=[0])
    assert len(model.stages) == 0
    with torch.no_grad():
        assert torch.equal(model.forward_intermediates(x, intermediates_only=True)[0], full[0])
        assert model(x).shape == full[0].shape


# ---------------------------------------------------------------- img_size

@pytest.mark.parametrize('name', SMALL_MODELS)
def test_img_size(name):
    family = _family(name)
    if family not in IMG_SIZE:
        with pytest.raises(TypeError, match='takes no img_size'):
            timm.create_model(name, img_size=256, device='meta')
        assert not hasattr(timm.create_model(name, device='meta'), 'set_input_size')
        return
    side = IMG_SIZE[family]
    model = timm.create_model(name, img_size=side, device='meta')
    assert tuple(model.img_size) == (side, side)
    assert get_model_input_config(model)['input_size'] == (3, side, side)
    assert hasattr(model, 'set_input_size') == (family in SET_INPUT_SIZE)
    if family in SIZE_RULE:
        with pytest.raises(ValueError, match='multiples? of'):
            timm.create_model(name, img_size=side + 1, device='meta')


@pytest.mark.parametrize('name, twin', [('twins_svt_s', 'twins_svt_small'), ('sequencer2d_small', 'sequencer2d_s')])
def test_img_size_as_timm_twin(name, twin):
    """Twins and Sequencer2D take ``img_size`` as their timm twins do: recorded, the network unchanged."""
    ours = timm.create_model(name, img_size=448, device='meta')
    theirs = timm.create_model(twin, img_size=448, device='meta')
    assert get_model_input_config(ours)['input_size'] == get_model_input_config(theirs)['input_size'] == (3, 448, 448)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


# ---------------------------------------------------------------- transformers AutoBackbone

@pytest.mark.parametrize('name', SMALL_MODELS)
def test_transformers_timm_backbone(name, monkeypatch):
    """transformers' ``TimmBackbone`` (what ``AutoBackbone`` builds for a timm name), offline, without weights:
    ``out_indices`` select the maps, ``output_hidden_states=True`` returns every level up to the deepest one asked
    for (timm's ``return_layers`` protocol), the same maps as ``forward_intermediates``."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    n = len(timm.create_model(name, device='meta', **reduced_kwargs(name)).feature_info)
    out_indices = [n - 3, n - 2] if n > 3 else [0, n - 1]  # (n - 1 < deepest: the getter prunes the rest)
    config = TimmBackboneConfig(backbone=name, use_pretrained_backbone=False, out_indices=out_indices)
    backbone = TimmBackbone(config, **reduced_kwargs(name)).eval()
    assert backbone.stage_names == [info['module'] for info in backbone._backbone.feature_info.info]
    x = _image(backbone._backbone.model)
    with torch.no_grad():
        out = backbone(x, output_hidden_states=True)
        plain = backbone(x)
        expected = backbone._backbone.model.forward_intermediates(
            x, indices=list(range(max(out_indices) + 1)), intermediates_only=True)
    assert len(out.hidden_states) == max(out_indices) + 1
    for h, e in zip(out.hidden_states, expected):
        assert torch.equal(h, e)
    assert len(out.feature_maps) == len(plain.feature_maps) == len(out_indices)
    for f, g, i in zip(out.feature_maps, plain.feature_maps, out_indices):
        assert torch.equal(f, expected[i]) and torch.equal(g, expected[i])
    assert list(backbone.out_indices) == out_indices
