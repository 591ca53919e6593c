"""ParCNetV2: parity with the official code (fixtures), the oversized conv's two exact
formulations, LayerNormGeneral, input sizes, the optional kernel resize, conversion and tracing."""
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from _oracle import assert_fx_stage_features, parity_fixture
from conftest import max_diff_f32

from backbones._checkpoint import CheckpointMismatchError
from backbones.layers import oversize_conv
from backbones.layers.oversize_conv import OversizeConv2d, toeplitz_taps
from backbones.models.parcnetv2 import LayerNormGeneral, checkpoint_filter_fn, feature_sizes

K2N = 'parcnetv2_d1121_w16-64_k2h_64x64'  # kernels 31/15/7/3 = 2n - 1 on 16/8/4/2 maps
LONG = 'parcnetv2_d1111_w16-64_kdefault_96x64'  # default 111/55/27/13 kernels on 24x16 .. 3x2 maps
TINY = dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=10)


def _official_model(meta, official, **kwargs):
    """Our model built with the fixture's official constructor config, holding the converted official weights
    (given as timm's training checkpoint container)."""
    cfg = dict(meta['config'], **kwargs)
    model = timm.create_model('parcnetv2_xt', device='meta', **cfg)
    model.load_state_dict(checkpoint_filter_fn({'state_dict': official, 'epoch': 300}, model), assign=True)
    return model.eval()


# ---------------------------------------------------------------- parity with the official code

@pytest.mark.parametrize('fixture', [K2N, LONG])
def test_fixture_parity(fixture):
    """Both formulations of the oversized conv reproduce the official logits: the convolutions (no grad) and the
    Toeplitz matmuls (autograd on)."""
    meta, official, x, expected = parity_fixture('parcnetv2', fixture)
    model = _official_model(meta, official)
    assert sum(p.numel() for p in model.parameters()) == meta['num_params']
    with torch.no_grad():
        by_conv = model(x)
    by_matmul = model(x)
    assert by_matmul.requires_grad
    for logits in (by_conv, by_matmul.detach()):
        assert logits.shape == expected.shape
        assert (logits - expected).abs().max().item() <= meta['atol']


# ---------------------------------------------------------------- official kernel lengths

def test_kernels_of_another_length_are_refused():
    """Kernels of another length load only into a model built with resize_kernels=True."""
    meta, official, _, _ = parity_fixture('parcnetv2', K2N)
    model = timm.create_model('parcnetv2_xt', **dict(meta['config'], global_kernel_sizes=(33, 15, 7, 3)), device='meta')
    mismatch = r'shape mismatches.*conv_h\.weight \(checkpoint \(16, 1, 31, 1\)'
    with pytest.raises(CheckpointMismatchError, match=mismatch):
        checkpoint_filter_fn(official, model)


# ---------------------------------------------------------------- LayerNormGeneral

def test_layer_norm_general_is_the_official_formula():
    """(x - mean_C) / max(||x - mean_C||_2, eps) * weight over the channels; no bias; eps clamps the norm."""
    torch.manual_seed(0)
    norm = LayerNormGeneral(8)
    assert [n for n, _ in norm.named_parameters()] == ['weight'] and norm.eps == 1e-6
    with torch.no_grad():
        norm.weight.normal_(1, 0.5)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64) * 3 + 1
    x[0, :, 0, 0] = 7.0  # constant channel vector: centred vector 0, output 0 (no NaN)
    x[0, :, 0, 1] = 1.0 + 1e-8 * torch.arange(8, dtype=torch.float64)  # centred norm < eps: divided by eps
    c = x - x.mean(1, keepdim=True)
    expected = c / c.pow(2).sum(1, keepdim=True).sqrt().clamp_min(1e-6) * norm.weight.double()[:, None, None]
    got = norm.double()(x)
    assert torch.allclose(got, expected, atol=1e-12, rtol=1e-10)
    assert got[0, :, 0, 0].abs().max() == 0
    unweighted = got[0, :, 0, 1] / norm.weight.double()
    assert abs(unweighted.norm() - 42 ** 0.5 * 1e-2) < 1e-6  # ||c|| / eps; normalising would have given norm 1
    # it is an L2 normalisation: a standard LayerNorm (unit variance) is sqrt(C) times larger
    ln = F.layer_norm(x.permute(0, 2, 3, 1), (8,), eps=0.).permute(0, 3, 1, 2)
    assert torch.allclose(got[1], ln[1] * norm.weight.double()[:, None, None] / 8 ** 0.5, atol=1e-10)


# ---------------------------------------------------------------- the oversized separable depth-wise conv

def _stock(x, w_h, w_w):
    """The official operator: nn.Conv2d-style depth-wise (K, 1) then (1, K), zero padding K // 2."""
    c = x.shape[1]
    y = F.conv2d(x, w_h, padding=(w_h.shape[2] // 2, 0), groups=c)
    return F.conv2d(y, w_w, padding=(0, w_w.shape[3] // 2), groups=c)


@pytest.mark.parametrize('size,kernel', [
    ((16, 16), (31, 31)),  # K = 2n - 1: every output sees the whole axis
    ((6, 4), (31, 15)),  # kernels longer than the map: only the central 2n - 1 taps touch data
    ((19, 12), (7, 11)),  # maps longer than the kernels: a band
    ((1, 3), (5, 3)),
])
def test_oversize_conv_formulations_equal_the_convolution(size, kernel):
    torch.manual_seed(0)
    conv = OversizeConv2d(6, kernel)
    x = torch.randn(2, 6, *size, requires_grad=True)
    expected = _stock(x, conv.conv_h.weight, conv.conv_w.weight)
    by_matmul = conv(x)  # autograd records the call: Toeplitz matmuls
    with torch.no_grad():
        by_conv = conv(x)
    assert max_diff_f32(by_matmul, expected) <= 1e-5
    assert max_diff_f32(by_conv, expected) <= 1e-5
    grads = torch.autograd.grad(by_matmul.square().sum(), (x, conv.conv_h.weight, conv.conv_w.weight))
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, conv.conv_h.weight, conv.conv_w.weight))
    for g, e in zip(grads, expected_grads):
        assert (g - e).abs().max() <= 1e-4 * max(1., e.abs().max().item())


def test_toeplitz_matrix_holds_the_taps_that_touch_data():
    w = torch.arange(1., 8.)[None]  # K = 7, centre tap 4.
    t = toeplitz_taps(w, 3)[0]
    assert torch.equal(t, torch.tensor([[4., 5., 6.], [3., 4., 5.], [2., 3., 4.]]))  # T[i, j] = w[j - i + 3]
    t = toeplitz_taps(w, 9)[0]
    assert t[0, 3] == 7. and t[0, 4] == 0. and t[8, 5] == 1. and t[8, 4] == 0.  # outside the kernel: 0


def test_oversize_conv_path_follows_autograd(monkeypatch):
    """The Toeplitz form runs exactly when autograd records the call; inference runs the convolutions."""
    calls = []
    real = oversize_conv.oversize_conv_matmul
    monkeypatch.setattr(oversize_conv, 'oversize_conv_matmul', lambda *a: calls.append(1) or real(*a))
    conv = OversizeConv2d(4, 9)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        conv(x)
    assert not calls
    conv(x)
    assert len(calls) == 1
    conv.requires_grad_(False)
    conv(x)  # nothing requires grad: no backward will run
    assert len(calls) == 1
    conv(x.requires_grad_())
    assert len(calls) == 2
    with pytest.raises(ValueError, match='odd'):
        OversizeConv2d(4, (8, 9))


# ---------------------------------------------------------------- input sizes

def test_any_side_from_3_works_with_official_map_sizes():
    model = timm.create_model('parcnetv2_xt', **TINY).eval()
    for h, w in [(80, 112), (3, 3), (65, 33)]:
        with torch.no_grad():
            feats = model.forward_intermediates(torch.randn(1, 3, h, w), intermediates_only=True)
        assert [tuple(f.shape[-2:]) for f in feats] == list(feature_sizes((h, w)))
    # the official arithmetic: stem floor((side - 3) / 4) + 1, then ceil(n / 2) per downsampling
    assert feature_sizes((80, 112)) == ((20, 28), (10, 14), (5, 7), (3, 4))
    assert feature_sizes(224) == ((56, 56), (28, 28), (14, 14), (7, 7))


def test_too_small_input_is_refused():
    model = timm.create_model('parcnetv2_xt', device='meta')
    with pytest.raises(ValueError, match=r'sides of at least 3 .*got 2x64'):
        model(torch.empty(1, 3, 2, 64, device='meta'))
    with pytest.raises(ValueError, match='sides of at least 3 '):
        model.forward_intermediates(torch.empty(1, 3, 64, 1, device='meta'))
    with pytest.raises(ValueError, match='expects 3 input channels'):
        model(torch.empty(1, 1, 64, 64, device='meta'))


@pytest.mark.parametrize('grad', [False, True])
def test_batch_size_zero(grad):
    model = timm.create_model('parcnetv2_xt', **TINY).eval()
    with torch.set_grad_enabled(grad):
        assert model(torch.randn(0, 3, 64, 96)).shape == (0, 10)
        feats = model.forward_intermediates(torch.randn(0, 3, 64, 96), intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [(0, 16, 16, 24), (0, 32, 8, 12), (0, 48, 4, 6), (0, 64, 2, 3)]


# ---------------------------------------------------------------- the paper's "kernel = 2x the map" option

def _official_resize_mode(self, x):
    """The official OversizeConv2d with interpolate=True, as it runs: the learned kernels resized to 2H - 1 / 2W - 1
    (bilinear, align_corners=True) on every forward, padding H - 1 / W - 1."""
    h, w = x.shape[-2:]
    k_h = F.interpolate(self.conv_h.weight, size=(2 * h - 1, 1), mode='bilinear', align_corners=True)
    k_w = F.interpolate(self.conv_w.weight, size=(1, 2 * w - 1), mode='bilinear', align_corners=True)
    return _stock(x, k_h, k_w)


def test_resize_kernels_off_by_default():
    model = timm.create_model('parcnetv2_xt', img_size=320, device='meta')
    assert model.stages[0].blocks[0].token_mixer.dwconv1.kernel_size == (111, 111)
    model = timm.create_model('parcnetv2_xt', img_size=(320, 192), resize_kernels=True, device='meta')
    assert [s.blocks[0].token_mixer.dwconv1.kernel_size for s in model.stages] == [
        (159, 95), (79, 47), (39, 23), (19, 11)]


def test_set_input_size_resizes_the_kernels_once(monkeypatch):
    """set_input_size((96, 64)) = the official resize mode at 96x64 (kernels 2n - 1 per axis and stage), done once;
    at a size where K = 2n - 1 already it changes nothing."""
    meta, official, x, expected = parity_fixture('parcnetv2', LONG)
    model = _official_model(meta, official)
    frozen = model.stages[1].blocks[0].token_mixer.dwconv1.conv_w.weight.requires_grad_(False)
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(OversizeConv2d, 'forward', _official_resize_mode)
        reference = model(x)
    model.set_input_size((96, 64))
    assert [s.blocks[0].token_mixer.dwconv1.kernel_size for s in model.stages] == [
        (47, 31), (23, 15), (11, 7), (5, 3)]
    assert not model.stages[1].blocks[0].token_mixer.dwconv1.conv_w.weight.requires_grad and frozen.shape[-1] == 55
    assert model._model_args['resize_kernels'] is True and model._model_args['img_size'] == (96, 64)
    with torch.no_grad():
        got = model(x)
        assert max_diff_f32(got, reference) <= 1e-5
        assert (got - expected).abs().max() > 1e-2  # the fixed official kernels give other numbers here
        weights = [p.clone() for p in model.parameters()]
        model(torch.randn(1, 3, 64, 64))  # another size: nothing is resized per forward
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))

    meta, official, x, expected = parity_fixture('parcnetv2', K2N)
    model = _official_model(meta, official)
    model.set_input_size(64)
    with torch.no_grad():
        assert (model(x) - expected).abs().max() <= meta['atol']


def test_resize_kernels_at_load():
    """An official checkpoint loaded into a model built with resize_kernels=True and img_size: kernels resized once
    by the filter, the same model as set_input_size gives."""
    meta, official, x, _ = parity_fixture('parcnetv2', LONG)
    loaded = _official_model(meta, official, img_size=(96, 64), resize_kernels=True)
    resized = _official_model(meta, official)
    resized.set_input_size((96, 64))
    with torch.no_grad():
        assert torch.equal(loaded(x), resized(x))


# ---------------------------------------------------------------- conversion and tracing

def test_convert_official_checkpoint(tmp_path):
    """tools/convert.py's library call on a timm-style official training checkpoint -> local-dir: gives the
    official logits."""
    from backbones.convert import convert_checkpoint
    meta, official, x, expected = parity_fixture('parcnetv2', LONG)
    ckpt = tmp_path / 'parcnetv2_official.pth.tar'
    torch.save({'epoch': 300, 'arch': 'parcnetv2_xt', 'state_dict': official}, ckpt)
    kwargs = {k: v for k, v in meta['config'].items() if k != 'num_classes'}
    out = convert_checkpoint('parcnetv2_xt', ckpt, tmp_path / 'out', model_kwargs=kwargs)
    config = json.loads((out / 'config.json').read_text())
    assert config['num_classes'] == 10 and config['model_args']['depths'] == [1, 1, 1, 1]
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    with torch.no_grad():
        assert (model(x) - expected).abs().max() <= meta['atol']


def test_fx_feature_extraction_matches_eager():
    assert_fx_stage_features(timm.create_model('parcnetv2_xt', **TINY).eval(), torch.randn(1, 3, 48, 80))


def test_compile_fullgraph_without_graph_breaks():
    """Dynamo traces the whole model into one graph, with either formulation of the oversized conv (dynamic
    shapes, batch 0 and inductor: the slow test below)."""
    torch._dynamo.reset()
    model = timm.create_model('parcnetv2_xt', **TINY).eval()
    compiled = torch.compile(model, fullgraph=True, backend='eager')
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)
    assert torch.allclose(compiled(x), model(x), atol=1e-5)  # autograd on: the Toeplitz form


@pytest.mark.slow
def test_compile_inductor_and_export_dynamic():
    """Inductor with dynamic shapes, inference and training, batch 0; torch.export with dynamic batch / H / W.
    Export ranges start at side 35, which keeps every stage map >= 2 (a map side of 1 is another specialisation,
    as for timm's convnets)."""
    from torch.export import Dim, export
    torch._dynamo.reset()
    model = timm.create_model('parcnetv2_xt', **TINY).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for shape in [(2, 3, 64, 96), (1, 3, 45, 37), (0, 3, 64, 64)]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert torch.allclose(compiled(x), model(x), atol=1e-5)
    x = torch.randn(2, 3, 64, 96)
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, model(x), atol=1e-5)
    program = export(model, (x,), dynamic_shapes=(
        {0: Dim('batch', min=1, max=64), 2: Dim('height', min=35, max=1024), 3: Dim('width', min=35, max=1024)},))
    for shape in [(2, 3, 64, 96), (1, 3, 35, 47), (3, 3, 224, 160)]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert torch.allclose(program.module()(x), model(x), atol=1e-5)
