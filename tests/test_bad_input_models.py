"""Bad model input and arguments: one clear ValueError / TypeError naming what was expected, never an error from
inside torch. The smallest variant of every family (new families join through ``conftest.SMALL_MODELS``); on the
meta device except where numbers must really flow (size limits, autocast)."""
import functools
import math
import re

import pytest
import timm
import torch
from _oracle import random_model
from _reduced import reduced_kwargs
from conftest import SMALL_MODELS, input_side

import backbones  # noqa: F401


def _meta(name, **kwargs):
    return timm.create_model(name, device='meta', **kwargs).eval()


@functools.cache
def _shared(name):
    """One meta model per family for the tests that only run it (none changes it)."""
    return _meta(name)


def _x(b=1, c=3, h=64, w=64, dtype=torch.float32):
    return torch.empty(b, c, h, w, device='meta', dtype=dtype)


def _fit(name, b=1) -> torch.Tensor:
    """A meta batch of the family's default size (which its size rule takes, e.g. multiples of 14 for Sequencer)."""
    _, h, w = _shared(name).pretrained_cfg['input_size']
    return _x(b=b, h=h, w=w)


def _raises(exc, match, fn, *args, **kwargs) -> str:
    """``fn(*args, **kwargs)`` raises exactly ``exc`` with a one-line message matching ``match``; returns it."""
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    assert type(info.value) is exc, f'{type(info.value).__name__}: {info.value}'
    assert '\n' not in str(info.value), str(info.value)
    return str(info.value)


# ---------------------------------------------------------------- the input tensor

@pytest.mark.parametrize('name', SMALL_MODELS)
def test_wrong_channel_count(name):
    model = _shared(name)
    _raises(ValueError, r'expects 3 input channels \(in_chans=3\), got 4', model, _x(c=4))
    _raises(ValueError, r'expects 3 input channels', model.forward_intermediates, _x(c=1))
    _raises(ValueError, r'expects 1 input channels \(in_chans=1\), got 3', _meta(name, in_chans=1), _x())


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_not_a_4d_batch(name):
    for shape in ((3, 64, 64), (1, 1, 3, 64, 64), (64,)):
        _raises(ValueError, r'expects a 4-D image batch \[B, 3, H, W\]', _shared(name),
                torch.empty(shape, device='meta'))


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_too_small(name, one_thread):
    """Each family states its real minimum: sides below it raise one ValueError naming it (checked against the
    network itself: with the check bypassed, the side just below the minimum fails inside torch), the minimum and
    sides around it run. Families that pad take anything down to 1x1, also very flat inputs."""
    model = random_model(name, num_classes=3)
    try:
        with torch.no_grad():
            out = model(torch.randn(1, 3, 1, 1))
    except ValueError as e:
        found = re.search(r'needs input sides of at least (\d+)', str(e))
        assert found, str(e)
        smallest = int(found[1])
        for h, w in ((smallest - 1, smallest), (smallest, smallest - 1), (0, smallest)):
            _raises(ValueError, f'at least {smallest}', model, torch.randn(1, 3, h, w))
        with torch.no_grad():
            assert model(torch.randn(1, 3, smallest, smallest)).shape == (1, 3)
        model._check_input = lambda x: None  # the limit is the network's, not only ours
        with pytest.raises(Exception), torch.no_grad():  # noqa: B017 (any error: the network cannot run it)
            model(torch.randn(1, 3, smallest - 1, smallest - 1))
    else:
        assert out.shape == (1, 3)
        with torch.no_grad():
            for h, w in ((2, 2), (3, 5), (1, 97), (97, 1)):
                assert model(torch.randn(2, 3, h, w)).shape == (2, 3), (h, w)
        _raises(ValueError, 'at least 1', model, torch.randn(1, 3, 0, 16))


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_dtype_mismatch(name):
    model = _shared(name)
    x = _fit(name)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        got = str(dtype).split('.')[1]
        _raises(TypeError, f'expected float32 input for a float32 model, got {got}', model, x.to(dtype))
    for dtype in (torch.uint8, torch.int64, torch.bool):
        got = str(dtype).split('.')[1]
        _raises(TypeError, f'expected float32 input for a float32 model, got {got}: convert images to floating',
                model, x.to(dtype))
    _raises(TypeError, 'got float16', model.forward_intermediates, x.half())
    half = _meta(name).to(torch.bfloat16)
    _raises(TypeError, 'expected bfloat16 input for a bfloat16 model, got float32', half, x)
    assert half(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_check_input_fixed_grid_and_minimum():
    """The rules token families will use (no zoo model has a fixed grid yet), on check_input itself."""
    from backbones.layers import check_input
    x = torch.empty(0, 3, 224, 224, device='meta')  # an empty batch passes
    assert check_input(x, 3, 16, 'ViT', img_size=(224, 224)) == (224, 224)
    _raises(ValueError, 'ViT takes 224x224 inputs only, got 240x224', check_input, _x(h=240, w=224), 3, 16, 'ViT',
            img_size=(224, 224))
    _raises(ValueError, 'ViT needs input sides of at least 16 that are multiples of 16', check_input, _x(h=8), 3, 16,
            'ViT')
    _raises(ValueError, r'ViT needs input sides of at least 5 .*got 64x4', check_input, _x(w=4), 3, 1, 'ViT', 5)


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_autocast_still_runs(name, one_thread):
    """AMP as timm trains: a float32 batch into a float32 model under autocast; a bf16 batch works there too."""
    model = random_model(name, num_classes=3)
    side = input_side(_shared(name), 64)
    x = torch.randn(1, 3, side, side)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert model(x).shape == (1, 3)
        assert model(x.to(torch.bfloat16)).shape == (1, 3)
        _raises(TypeError, 'got uint8', model, x.to(torch.uint8))


@pytest.mark.parametrize('name,tracer', [
    (n, 'timm') for n in SMALL_MODELS if n in ('rednet26', 'tiny_moat_0_no_pe', 'sknet50')] + [
    (n, 'torch.fx') for n in SMALL_MODELS])
def test_checks_kept_in_fx_graphs(name, tracer):
    """FX graphs keep the checks, with the eager messages: timm's FX feature extraction (which drops calls whose
    result is unused: the checks are marked side-effecting) and plain ``torch.fx.symbolic_trace`` (the tracer of
    torchvision and torch.ao; ``check_input`` is a leaf for it too). The dtype check follows the weights
    (``.half()`` after tracing). RedNet and MOAT have their own check functions; the others share the mixins'."""
    if tracer == 'timm':
        model = timm.create_model(name, features_only=True, feature_cls='fx', device='meta').eval()
    else:
        model = torch.fx.symbolic_trace(timm.create_model(name, device='meta', **reduced_kwargs(name)).eval())
        _raises(ValueError, 'expects a 4-D image batch', model, _x()[0])
    _raises(ValueError, 'expects 3 input channels', model, _x(c=4))
    _raises(TypeError, 'expected float32 input for a float32 model, got float16', model, _x(dtype=torch.float16))
    model.half()
    _raises(TypeError, 'expected float16 input for a float16 model, got float32', model, _x())


# ---------------------------------------------------------------- build arguments

@pytest.mark.parametrize('name', SMALL_MODELS)
def test_drop_path_rate_out_of_range(name):
    for rate in (1.0, -0.1, 1.5, math.nan):
        _raises(ValueError, r'drop_path_rate must be in \[0, 1\)', _meta, name, drop_path_rate=rate)
    _raises(TypeError, 'drop_path_rate must be a number', _meta, name, drop_path_rate='0.1')
    assert _meta(name, drop_path_rate=0.99) is not None


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_in_chans_below_one(name):
    for in_chans in (0, -3):
        _raises(ValueError, f'in_chans must be >= 1 .*got {in_chans}', _meta, name, in_chans=in_chans)
    _raises(TypeError, 'in_chans must be an int', _meta, name, in_chans=3.0)


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_unknown_global_pool(name):
    valid = r"unknown global_pool 'nope': valid are .*'avg'"  # every head takes 'avg'; the message lists them all
    _raises(ValueError, valid, _meta, name, global_pool='nope')
    model = _meta(name, global_pool='avg')
    _raises(ValueError, valid, model.reset_classifier, 5, 'nope')
    model.reset_classifier(5, 'avg')
    assert model(_fit(name, b=2)).shape == (2, 5)


def test_head_pool_types():
    """The pools timm's SelectAdaptivePool2d takes (any case, as timm); none that doubles the width before a norm."""
    from torch import nn

    from backbones.layers import Head
    assert Head(8, 2, 'catavgmax').hidden_size == 16 and Head(8, 2, 'AVG').hidden_size == 8
    _raises(ValueError, 'no pool that doubles its width', Head, 8, 2, 'catavgmax', norm_layer=nn.LayerNorm)
    _raises(ValueError, "valid are 'avg', 'max', 'avgmax', 'catavgmax'", Head(8, 2).reset, 2, 'mean')
    _raises(TypeError, 'global_pool must be a string', Head, 8, 2, None)


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_out_indices(name):
    """Through ``features_only`` (timm's feature wrapper prunes the model to ``out_indices``) and
    ``forward_intermediates``; the other bad index sets through the same pruning call."""
    n = len(_shared(name).feature_info)
    valid = rf'valid indices are 0\.\.{n - 1} \(or -{n}\.\.-1 counted from the end\)'
    _raises(ValueError, f'feature index {n} is out of range: {valid}', _meta, name, features_only=True,
            out_indices=(n,))
    assert _meta(name, features_only=True, out_indices=(-2, -1)).feature_info.out_indices == (n - 2, n - 1)
    _raises(ValueError, 'out of range', _shared(name).forward_intermediates, _fit(name), indices=[n])
    model = _meta(name)
    for bad in ((0, n + 2), (-n - 1,)):
        _raises(ValueError, f'out of range: {valid}', model.prune_intermediate_layers, bad)
    for bad in ((1, 1), (n - 1, -1)):
        _raises(ValueError, f'name a level twice .*{valid}', model.prune_intermediate_layers, bad)
    _raises(ValueError, f'must go from shallow to deep .*{valid}', model.prune_intermediate_layers, (2, 1))
    _raises(ValueError, f'1..{n}', model.prune_intermediate_layers, n + 1)
    assert model(_fit(name)).shape == (1, model.num_classes)  # a refused call pruned nothing


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_negative_num_classes(name):
    """Refused alike in every family, when building and in ``reset_classifier`` (a negative count used to build a
    headless model in some families and, in CrossViT, one that failed at its first forward); 0 means no classifier."""
    _raises(ValueError, rf'{name}: num_classes must be >= 0 \(0: no classifier\), got -1', _meta, name, num_classes=-1)
    _raises(TypeError, "num_classes must be a whole number >= 0 .*got 'ten'", _meta, name, num_classes='ten')
    model = _shared(name)
    _raises(ValueError, 'num_classes must be >= 0 .*got -2', model.reset_classifier, -2)
    assert model.num_classes == 1000  # a refused call changed nothing


# every family with set_input_size / img_size: its smallest side (one patch, one partition position, one pixel of
# the last stage's map) and the multiple its sides must be
SIZED = [('convit_ti', 16, 16), ('crossvit_tiny', 12, 12), ('maxvit_tiny', 32, 1), ('parcnetv2_xt', 3, 1)]


@pytest.mark.parametrize('name,smallest,divisor', SIZED)
def test_img_size_checked_before_resampling(name, smallest, divisor):
    """``set_input_size`` and ``img_size`` of 0, negative, below the family's minimum or off its size rule: one
    line naming the family and its minimum, before a table or kernel is resampled (torch's interpolate used to say
    "Input and output sizes should be greater than 0", ParCNetV2 "negative dimension -1")."""
    model = _meta(name)
    size = tuple(model.img_size) if model.img_size is not None else None
    rule = rf'img_size sides must be at least {smallest}'
    for bad in (0, -divisor, smallest - 1, (smallest, 0)):
        _raises(ValueError, rule, model.set_input_size, bad)
    assert (tuple(model.img_size) if model.img_size is not None else None) == size  # a refused call changed nothing
    _raises(TypeError, 'img_size must be a whole number or a \\(height, width\\) pair', model.set_input_size, 'big')
    model.set_input_size(smallest)  # the minimum itself is fine
    if divisor > 1:
        _raises(ValueError, f'and multiples of {divisor}', model.set_input_size, smallest + 1)
        _raises(ValueError, rule, _meta, name, img_size=smallest - divisor // 2)
    if name.startswith('parcnetv2'):  # img_size sets the kernels' sizes with resize_kernels
        _raises(ValueError, rule, _meta, name, resize_kernels=True, img_size=1)
