"""timm's model contract, checked on every zoo model (meta device) and for real on the smallest of each family."""
import fnmatch
import io

import pytest
import timm
import torch
from _reduced import reduced_model
from conftest import ALL_MODELS, SMALL_MODELS, assert_close_f32, input_side
from timm.models import get_pretrained_cfg

from backbones._token import MultiBranchTokenMixin, TokenFeatureMixin

SIZE = 64  # small real input side, rounded up to the model's size rule (input_side): 64 and 64x96 for most


def _x(model, h=SIZE, w=SIZE, b=2, device='cpu'):
    return torch.randn(b, 3, input_side(model, h), input_side(model, w), device=device)


def _is_token_model(model) -> bool:
    """Token models (backbones._token) return tokens [B, P + N, C]; stage models NCHW maps [B, C, H, W]."""
    return isinstance(model, (TokenFeatureMixin, MultiBranchTokenMixin))


def _is_multi_branch(model) -> bool:
    """Multi-branch token models (CrossViT) return a list of tokens [B, 1 + N_b, C_b], one per branch."""
    return isinstance(model, MultiBranchTokenMixin)


def _features_shape(model, b: int, h: int, w: int, reduction: int, num_chs: int):
    """Shape of unpooled features of an h x w input at ``reduction``: tokens (prefix tokens first) or a map."""
    gh, gw = -(-h // reduction), -(-w // reduction)
    if _is_token_model(model):
        return (b, model.num_prefix_tokens + gh * gw, num_chs)
    return (b, num_chs, gh, gw)


def _branch_shapes(model, b: int, h: int, w: int):
    """A multi-branch model's unpooled features of an h x w input: per branch [B, 1 + gh * gw, C_b]."""
    return [(b, 1 + gh * gw, c) for (gh, gw), c in zip(model.branch_grid_sizes((h, w)), model.embed_dim)]


def _tap_grids(model, h: int, w: int, indices):
    """The spatial size of each tap: the input over the reduction (rounded up), or for a multi-branch model the grid
    of the tap's branch (its own size rule, e.g. CrossViT's rescaled L branch)."""
    if _is_multi_branch(model):
        grids = model.branch_grid_sizes((h, w))
        return [grids[i // model.num_feature_blocks] for i in indices]
    return [(-(-h // model.feature_info[i]['reduction']), -(-w // model.feature_info[i]['reduction']))
            for i in indices]


# ---------------------------------------------------------------- every variant, on the meta device

@pytest.mark.parametrize('name', ALL_MODELS)
def test_meta_shapes(name):
    model = timm.create_model(name, device='meta').eval()
    cfg = model.pretrained_cfg
    assert model.in_chans == cfg['input_size'][0]
    x = torch.empty(1, *cfg['input_size'], device='meta')
    # one forward pass (meta ops run as Python decompositions): model(x), keeping what forward_features returned
    seen = []
    forward_features = model.forward_features
    model.forward_features = lambda *a, **k: seen.append(forward_features(*a, **k)) or seen[-1]
    assert model(x).shape == (1, cfg['num_classes'])
    del model.forward_features
    assert len(seen) == 1, f'{name}: forward did not go through forward_features once'
    feats = seen[0]
    if _is_token_model(model):  # timm's convention: no pool_size for token outputs
        assert cfg['pool_size'] is None, f'{name}: token model with a pool_size'
        h, w = cfg['input_size'][1:]
        if _is_multi_branch(model):
            assert [f.shape for f in feats] == _branch_shapes(model, 1, h, w)
        else:
            assert feats.shape == _features_shape(model, 1, h, w, model.patch_size, model.num_features)
    else:
        assert cfg['pool_size'], f'{name}: pretrained_cfg lacks pool_size'
        assert feats.shape == (1, model.num_features, *cfg['pool_size'])
    assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
    sd = model.state_dict()
    # a name, or a tuple as timm allows (a distilled model's two heads, a multi-branch model's convs and heads)
    for names in (cfg['first_conv'], cfg['classifier']):
        for n in (names,) if isinstance(names, str) else names:
            assert n + '.weight' in sd
    for p in list(model.parameters()) + list(model.buffers()):
        assert p.device.type == 'meta'


@pytest.mark.parametrize('name', ALL_MODELS)
def test_meta_features_only(name):
    model = timm.create_model(name, features_only=True, device='meta').eval()
    cfg = get_pretrained_cfg(name).to_dict()
    h, w = cfg['input_size'][1:]
    outs = model(torch.empty(1, 3, h, w, device='meta'))
    info = model.feature_info
    assert len(outs) == len(info.channels()) >= (model.model.num_branches if _is_multi_branch(model.model) else 3)
    for o, c, grid in zip(outs, info.channels(), _tap_grids(model.model, h, w, info.out_indices)):
        assert o.shape[1] == c
        assert tuple(o.shape[2:]) == grid


@pytest.mark.parametrize('name', ALL_MODELS)
def test_cfg_complete(name):
    cfg = get_pretrained_cfg(name).to_dict()
    for key in ('mean', 'std', 'crop_pct', 'interpolation', 'first_conv', 'classifier', 'license', 'paper_ids',
                'origin_url', 'input_size'):
        assert cfg.get(key), f'{name}: pretrained_cfg lacks {key}'
    # pool_size: set for stage models, None for token models (checked with the model in test_meta_shapes)


# ---------------------------------------------------------------- the smallest variant of each family, for real

@pytest.mark.parametrize('name', SMALL_MODELS)
def test_forward_and_classifier(name):
    model = timm.create_model(name, num_classes=7).eval()
    x = _x(model)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 7)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.head_hidden_size)
        assert torch.allclose(model(x), pre, atol=1e-5)
        model.reset_classifier(5, 'max')
        assert model(x).shape == (2, 5)
        if _is_multi_branch(model):  # branches of different widths and lengths: no unpooled output
            with pytest.raises(ValueError, match="unknown global_pool ''"):
                model.reset_classifier(0, '')
        else:
            model.reset_classifier(0, '')
            assert model(x).ndim == (3 if _is_token_model(model) else 4)
    assert not model.training  # reset keeps the mode
    m0 = timm.create_model(name, num_classes=0).eval()
    assert m0(x).shape == (2, m0.head_hidden_size)  # == num_features unless the head has a pre-logits layer


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_features_only_and_intermediates(name):
    model = timm.create_model(name).eval()
    feat = timm.create_model(name, features_only=True).eval()
    missing, unexpected = feat.load_state_dict(
        {'model.' + k: v for k, v in model.state_dict().items() if not k.startswith('head')}, strict=False)
    # the getter prunes the final norm (timm: prune_norm=not norm), so a model with a real final norm drops its keys,
    # and the stages after the deepest default level (Sequencer2D's last, as timm's default leaves it out)
    dropped = ('model.norm.',) + tuple(f'model.stages.{i}.' for i in range(len(getattr(feat.model, 'stages', [])), 9))
    assert not [k for k in unexpected if not k.startswith(dropped)]
    assert not [k for k in missing if not k.startswith('model.head')]
    x = _x(model, 64, 96)
    h, w = x.shape[-2:]
    taps = feat.feature_info.out_indices  # the family's default taps: every stage; a token model's last blocks
    with torch.no_grad():
        outs = feat(x)
        final, inter = model.forward_intermediates(x, indices=list(taps))
        for a, b in zip(*[f if isinstance(f, list) else [f] for f in (final, model.forward_features(x))]):
            assert torch.allclose(a, b, atol=1e-5)
    # a multi-branch model's default: the last block of every branch (what its heads read)
    assert len(outs) == len(inter) == len(taps) >= (model.num_branches if _is_multi_branch(model) else 3)
    if not _is_token_model(model):  # the first levels: all of them (Sequencer2D: the first three, as timm's)
        assert list(taps) == list(range(len(taps)))
    infos = [model.feature_info[t] for t in taps]
    for o, i, info, grid in zip(outs, inter, infos, _tap_grids(model, h, w, taps)):  # NCHW maps for every model
        assert o.shape[1] == info['num_chs']
        assert tuple(o.shape[-2:]) == grid
        assert torch.allclose(o, i, atol=1e-5)
    sub = timm.create_model(name, features_only=True, out_indices=(1, 2)).eval()
    assert sub.feature_info.channels() == [model.feature_info[1]['num_chs'], model.feature_info[2]['num_chs']]


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_prune_intermediate_layers(name):
    model = timm.create_model(name).eval()
    x = _x(model)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        assert torch.equal(early[0], full[1])
        kept = model.prune_intermediate_layers(indices=[1])
        # the levels left: blocks, or stages after the stem's level where the stem is one (level 0)
        levels = len(model.blocks) if _is_token_model(model) else len(model.stages) + model.stem_feature
        assert levels == 2
        info = model.feature_info[1]
        out = model(x)
        side = x.shape[-1]
        if _is_multi_branch(model):  # pruned heads: every branch's pooled features, concatenated
            assert out.shape == (2, model.num_features)
            assert [f.shape for f in model.forward_features(x)] == _branch_shapes(model, 2, side, side)
        else:  # pruned head: unpooled features
            assert model.num_features == info['num_chs']
            assert out.shape == _features_shape(model, 2, side, side, info['reduction'], info['num_chs'])
        tap = model.forward_intermediates(x, indices=kept, intermediates_only=True)[-1]
        assert torch.allclose(tap, full[1], atol=1e-6)


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_grad_checkpointing_identical(name):
    model = timm.create_model(name, drop_path_rate=0.).train()
    x = _x(model)
    torch.manual_seed(1)
    ref = model(x)
    ref.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    out = model(x)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], atol=1e-4, rtol=1e-4), n


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_backward_reaches_every_parameter(name):
    model = timm.create_model(name, num_classes=3, drop_path_rate=0.1).train()
    model(_x(model)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'parameters without gradient: {missing[:5]}'


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_unknown_kwarg_raises(name):
    with pytest.raises(TypeError):
        timm.create_model(name, not_a_model_arg=1, device='meta')


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_group_matcher_and_no_weight_decay(name):
    from timm.models import group_parameters
    model = timm.create_model(name, device='meta')
    for coarse in (True, False):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        assert len(groups) > 1
        assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    names = [n for n, _ in model.named_parameters()]
    for pattern in getattr(model, 'no_weight_decay', set)():
        assert any(fnmatch.fnmatch(n, pattern) for n in names) or getattr(model, pattern, 0) is None, pattern


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_torchscript(name):
    model = reduced_model(name, scriptable=True)  # scripting time grows with depth; every block type kept
    scripted = torch.jit.script(model)
    x = _x(model)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_in_chans_adapt_and_dtype(name):
    model = timm.create_model(name, in_chans=1, num_classes=4).eval()
    side = input_side(model, SIZE)
    assert model(torch.randn(1, 1, side, side)).shape == (1, 4)
    m64 = timm.create_model(name, num_classes=4).double().eval()
    assert m64(torch.randn(1, 3, side, side, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_torchscript_features_only(name):
    """A ``features_only`` model scripts (as timm's hierarchical models' FeatureListNet does), saves and loads, with
    the eager features; the index checks are eager-only (a scripted model takes the indices it was built with)."""
    model = reduced_model(name, features_only=True, out_indices=(-2, -1))
    scripted = torch.jit.script(model)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x = _x(model.model, b=1)
    with torch.no_grad():
        expected = model(x)
        got = loaded(x)
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected):
        assert_close_f32(g, e)


def test_init_runs_on_cpu_and_is_skipped_on_meta():
    """``skip_on_meta``: a model built for real gets its family's official init, one on the meta device none (its
    tensors hold nothing). Sequencer's official init zeroes the classifier and ConViT's draws its position table,
    neither of which torch's default init does."""
    from backbones.layers.init import is_meta, skip_on_meta

    class Probe(torch.nn.Linear):
        @skip_on_meta
        def init_weights(self):
            self.ran = True

    for device, ran in (('cpu', True), ('meta', False)):
        probe = Probe(2, 2, device=device)
        probe.ran = False
        probe.init_weights()
        assert probe.ran is ran and is_meta(probe) is (device == 'meta')
    assert not timm.create_model('sequencer2d_small', depths=(1, 1, 1, 1)).head.fc.weight.any()
    assert timm.create_model('convit_ti', depth=2, local_up_to_layer=1).pos_embed.std() > 0.01
