"""backbones.optimize_for_inference: the same logits as the eval-mode model, BatchNorms folded, on every family; the
result (and RapidNet's ``reparameterize``) is a marked deploy form: training it warns, saving it is refused."""
import warnings

import pytest
import torch
import torch.nn as nn
from _oracle import random_model
from _reduced import reduced_model
from conftest import SMALL_MODELS, assert_close_f32, input_side
from timm.utils.model import reparameterize_model

import backbones
from backbones.bench import calibrate_bn_
from backbones.layers import ConvNormAct, MBConv, SelectiveKernelAttn, Shortcut


def _model(name, **kwargs):
    """Random non-trivial weights, BatchNorm statistics calibrated on a random batch (``calibrate_bn_``: non-trivial
    and well-conditioned); returned in train mode: optimize_for_inference must switch to eval itself."""
    model = random_model(name, num_classes=10, **kwargs)
    side = input_side(model, 64)
    return calibrate_bn_(model, torch.randn(2, 3, side, side)).train()


def _foldable(model):
    """BatchNorms next to a conv in the shared layers (what the walker must fold)."""
    return [m for m in model.modules() if isinstance(m, (ConvNormAct, Shortcut, SelectiveKernelAttn))
            and type(m.bn) is nn.BatchNorm2d] + [
        m for m in model.modules() if isinstance(m, MBConv)
        and any(type(n) is nn.BatchNorm2d for n in (m.pre_norm, m.norm1, m.norm2))]


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_same_logits(name):
    model = _model(name)
    side = input_side(model, 64)
    x = torch.randn(1, 3, side, side)
    fast = backbones.optimize_for_inference(model)
    assert not fast.training and model.training  # a copy, in eval mode; the original is untouched
    assert not _foldable(fast)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if _foldable(model):
        assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) < n_bn
    with torch.no_grad():
        expected, got = model.eval()(x), fast(x)
    assert_close_f32(got, expected)
    # a deploy form exactly when something was folded away (its state dict lost keys): training it warns, once
    folded = set(fast.state_dict()) != set(model.state_dict())
    assert getattr(fast, 'deploy_form', None) == ('optimize_for_inference' if folded else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        fast.train()
        fast.train()
        fast.eval()
    assert [str(w.message).split(':')[0] for w in caught] == ([f'{name} is a deploy form (optimize_for_inference)']
                                                              if folded else [])
    assert 'trains another network, without BatchNorm' in str(caught[0].message) if folded else True


def test_inplace_idempotent_and_timm_walker():
    model = _model('se_resnext50_32x4d', depths=(1, 1, 1, 1)).eval()  # SE, shortcuts and grouped convs
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        via_timm = reparameterize_model(model)  # timm's own walker reaches the same fuse() methods
        assert not _foldable(via_timm)
        assert_close_f32(via_timm(x), expected)
        same = backbones.optimize_for_inference(model, inplace=True)
        assert same is model and not _foldable(model)
        again = backbones.optimize_for_inference(model, inplace=True)  # nothing left to fold: a no-op
        assert_close_f32(again(x), expected)


def test_leaves_unfoldable_norms():
    """A norm that is not an eval-mode BatchNorm2d (here GroupNorm, and BN without running statistics) stays."""
    gn = ConvNormAct(4, 8, 3, norm_layer=lambda c, **kw: nn.GroupNorm(2, c, **kw))
    bn = ConvNormAct(4, 8, 3, norm_layer=lambda c, **kw: nn.BatchNorm2d(c, track_running_stats=False, **kw))
    model = backbones.optimize_for_inference(nn.Sequential(gn, bn))
    assert isinstance(model[0].bn, nn.GroupNorm) and isinstance(model[1].bn, nn.BatchNorm2d)


def test_fold_bn_into_following_pointwise_conv():
    """``conv(bn(x))`` folds into the 1x1 conv after it (exact), and refuses a conv where it would not be."""
    from backbones.layers.fuse import fuse_bn_conv_
    bn, conv = nn.BatchNorm2d(6).eval(), nn.Conv2d(6, 4, 1, bias=False)
    with torch.no_grad():
        for p in (bn.weight, bn.bias, bn.running_mean, conv.weight):
            p.normal_()
        bn.running_var.uniform_(0.5, 2.)
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        expected = conv(bn(x))
        assert_close_f32(fuse_bn_conv_(bn, conv)(x), expected)
    for bad in (nn.Conv2d(6, 4, 3, padding=1), nn.Conv2d(6, 4, 1, padding=1), nn.Conv2d(6, 4, 1, groups=2)):
        with pytest.raises(ValueError, match='fold'):
            fuse_bn_conv_(bn, bad)


def test_deploy_forms_are_not_saved(tmp_path):
    """A re-parameterised RapidNet (the official deploy form) and an optimized model: ``save_for_hf`` refuses them in
    one line (their folded state dicts would not load back: "missing keys (300)"), and their ``.train()`` warns."""
    from backbones import hub
    rapid = reduced_model('rapidnet_ti').reparameterize()
    assert rapid.deploy_form == 'RapidNet.reparameterize'
    with pytest.warns(UserWarning, match='rapidnet_ti is a deploy form'):
        rapid.train()
    fast = backbones.optimize_for_inference(reduced_model('se_resnext50_32x4d'))
    for model, how in ((rapid, 'RapidNet.reparameterize'), (fast, 'optimize_for_inference')):
        with pytest.raises(ValueError, match=rf'is a deploy form \({how}: .* save the model before folding') as e:
            hub.save_for_hf(model, tmp_path / 'x')
        assert '\n' not in str(e.value) and not (tmp_path / 'x').exists()
    hub.save_for_hf(reduced_model('rapidnet_ti'), tmp_path / 'plain')  # the model as built saves as before
