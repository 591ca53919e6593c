"""RapidNet: parity with the official code (fixtures), the official deploy layout, the distillation head,
re-parameterisation, hub loading of the released files, sizes, tracing."""
import json

import pytest
import timm
import torch
from _oracle import assert_official_logits, parity_fixture
from conftest import max_diff_f32
from test_hub import hub, server  # noqa: F401  (the loopback Hub fixtures)

from backbones._checkpoint import CheckpointMismatchError
from backbones.models.rapidnet import RapidNet, checkpoint_filter_fn, official_drop_path_rates

FOLDER = 'rapidnet'  # tests/fixtures/rapidnet
DIST = 'rapidnet_b1111_g0011_w16-48_64x64'  # distillation head on, 64x64
NODIST = 'rapidnet_b2101_g0021_w8-32_57x43_nodist'  # no distillation head, odd 57x43 input
VARIANTS = ['rapidnet_ti', 'rapidnet_s', 'rapidnet_m', 'rapidnet_b']
# official parameter counts without the distillation classifier (official code, distillation=False)
PARAMS_NODIST = {'rapidnet_ti': 6_114_840, 'rapidnet_s': 8_700_088, 'rapidnet_m': 16_791_496,
                 'rapidnet_b': 29_787_496}


def _kwargs(config, **overrides):
    """Our constructor arguments for an official ``RapidNet(**config)``."""
    return dict(dict(depths=config['blocks'], widths=config['channels'], head_hidden_size=config['emb_dims'],
                     distilled=config['distillation'], num_classes=config['num_classes']), **overrides)


def _load(checkpoint, config, **overrides):
    model = timm.create_model('rapidnet_ti', device='meta', **_kwargs(config, **overrides))
    model.load_state_dict(checkpoint_filter_fn(checkpoint, model), assign=True)
    return model.eval()


def _official_reparameterized(official):
    """The official ``reparameterize_model``: each ``cpe.pe`` becomes ``cpe.reparam_conv`` with +1 at the centre."""
    out = {}
    for k, v in official.items():
        if '.cpe.pe.' in k:
            k = k.replace('.cpe.pe.', '.cpe.reparam_conv.')
            if k.endswith('weight'):
                v = v.clone()
                v[:, 0, v.shape[-2] // 2, v.shape[-1] // 2] += 1
        out[k] = v
    return out


# ---------------------------------------------------------------- parity with the official code

@pytest.mark.parametrize('fixture', [DIST, NODIST])
def test_fixture_parity(fixture):
    """Official weights in the released container, in the training and in the official deploy layout
    (``cpe.reparam_conv``) -> our filter -> our training model: the official logits."""
    meta, official, x, logits = parity_fixture(FOLDER, fixture)
    decoy = {k: torch.zeros_like(v) for k, v in official.items()}
    folded = _official_reparameterized(official)
    assert any('reparam_conv' in k for k in folded)
    # 'state_dict' is what the official evaluation reads (the decoy EMA copy must be ignored)
    for checkpoint in ({'state_dict': official, 'state_dict_ema': decoy}, folded):
        assert_official_logits(_load(checkpoint, meta['config']), meta, x, logits)


@pytest.mark.parametrize('name', VARIANTS)
def test_params_without_distillation_head_equal_official(name):
    """(With the head: the checkpoint contract, against the manifests.)"""
    single = timm.create_model(name, device='meta', distilled=False)
    assert sum(p.numel() for p in single.parameters()) == PARAMS_NODIST[name]


# ---------------------------------------------------------------- the distillation head

def test_distilled_eval_is_the_average_and_training_follows_timm():
    meta, official, x, logits = parity_fixture(FOLDER, DIST)
    model = _load(official, meta['config'])
    head = model.head
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, meta['config']['emb_dims'])
        assert torch.allclose(model(x), (head.fc(pre) + head.fc_dist(pre)) / 2, atol=1e-6)
    assert model.get_classifier() == (head.fc, head.fc_dist)
    saved = {k: v.clone() for k, v in model.state_dict().items()}  # training forwards update the BN statistics
    model.train()  # timm's DeiT default: the average in training too
    torch.manual_seed(0)
    avg = model(x)
    assert torch.is_tensor(avg)
    model.set_distilled_training(True)
    torch.manual_seed(0)
    out, out_dist = model(x)  # the official training output
    assert torch.allclose((out + out_dist) / 2, avg, atol=1e-6) and not torch.allclose(out, out_dist)
    model.load_state_dict(saved)
    model.eval()
    with torch.no_grad():
        assert (model(x) - logits).abs().max().item() <= meta['atol']  # eval ignores distilled_training
    model.reset_classifier(5)
    assert head.fc.out_features == head.fc_dist.out_features == model.num_classes == 5
    model.reset_classifier(0)
    with torch.no_grad():
        assert torch.equal(model(x), pre)


def test_distilled_checkpoint_into_single_head_model_and_back():
    """Folding both classifiers into one (distilled -> single) or duplicating one (single -> distilled) keeps the
    official eval logits."""
    meta, official, x, logits = parity_fixture(FOLDER, DIST)
    single = _load(official, meta['config'], distilled=False)
    assert not [k for k in single.state_dict() if 'fc_dist' in k] and single.get_classifier() is single.head.fc
    with torch.no_grad():
        assert (single(x) - logits).abs().max().item() <= meta['atol']
    meta, official, x, logits = parity_fixture(FOLDER, NODIST)
    both = _load(official, meta['config'], distilled=True)
    with torch.no_grad():
        assert (both(x) - logits).abs().max().item() <= meta['atol']


# ---------------------------------------------------------------- re-parameterisation

def test_reparameterize_exact_and_layouts():
    from timm.utils.model import reparameterize_model
    meta, official, x, logits = parity_fixture(FOLDER, DIST)
    model = _load(official, meta['config'])
    with torch.no_grad():
        ref = model(x)
    folded = reparameterize_model(model)  # timm's walker: calls each block's reparameterize()
    model.reparameterize()
    model.reparameterize()  # idempotent
    for m in (model, folded):
        sd = m.state_dict()
        assert not [k for k in sd if '.bn.' in k or '.ls' in k or k.startswith('head.norm') or '.cpe.pe.' in k]
        assert any('.cpe.reparam_conv.' in k for k in sd)
        with torch.no_grad():
            assert max_diff_f32(m(x), ref) <= 1e-5
    assert model.state_dict().keys() == folded.state_dict().keys()
    assert sum(p.numel() for p in model.parameters()) < meta['num_params']  # BN affine and layer scales gone
    # a re-parameterised model takes its own layout; training layouts get a clear hint
    fresh = timm.create_model('rapidnet_ti', **_kwargs(meta['config'])).eval().reparameterize()
    fresh.load_state_dict(checkpoint_filter_fn(model.state_dict(), fresh))
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    with pytest.raises(CheckpointMismatchError, match='then call reparameterize'):
        checkpoint_filter_fn(official, fresh)


@pytest.mark.slow
def test_reparameterized_torchscript():
    meta, official, x, logits = parity_fixture(FOLDER, DIST)
    model = _load(official, meta['config']).reparameterize()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert (scripted(x) - logits).abs().max().item() <= meta['atol']


# ---------------------------------------------------------------- released weights through timm's hub loading

def test_pretrained_from_the_hub(hub, tmp_path):  # noqa: F811
    """``pretrained=True`` downloads ``SLDGroup/RapidNet/RapidNet_Ti.pth`` and converts it: the official fixture
    weights in the released container (read with weights_only=True), served by the loopback Hub, give the official
    logits."""
    from huggingface_hub import HfApi
    cfg = timm.models.get_pretrained_cfg('rapidnet_ti')
    assert (cfg.hf_hub_id, cfg.hf_hub_filename) == ('SLDGroup/RapidNet', 'RapidNet_Ti.pth')
    assert cfg.classifier == ('head.fc', 'head.fc_dist')
    meta, official, x, logits = parity_fixture(FOLDER, DIST)
    path = tmp_path / 'RapidNet_Ti.pth'
    torch.save({'state_dict': official, 'state_dict_ema': official}, path)
    api = HfApi(endpoint=hub.url, token='hf_fake')
    api.create_repo('SLDGroup/RapidNet')
    api.upload_file(path_or_fileobj=str(path), path_in_repo='RapidNet_Ti.pth', repo_id='SLDGroup/RapidNet')
    kwargs = _kwargs(meta['config'])
    overlay = dict(num_classes=kwargs['num_classes'])  # the fixture's 10 classes stand for the release's 1000
    model = timm.create_model('rapidnet_ti', pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()
    with torch.no_grad():
        assert (model(x) - logits).abs().max().item() <= meta['atol']
    kwargs['num_classes'] = 3
    tuned = timm.create_model('rapidnet_ti', pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    assert tuned.head.fc.out_features == tuned.head.fc_dist.out_features == 3  # both classifiers re-made
    assert torch.equal(tuned.stem.conv1.conv.weight, model.stem.conv1.conv.weight)


def test_convert_official_checkpoint(tmp_path):
    """tools/convert.py's path: the official release container -> save_for_hf folder -> local-dir: logits."""
    from backbones.convert import convert_checkpoint
    meta, official, x, logits = parity_fixture(FOLDER, NODIST)
    ckpt = tmp_path / 'RapidNet_small.pth'
    torch.save({'state_dict': official, 'state_dict_ema': official}, ckpt)
    kwargs = {k: v for k, v in _kwargs(meta['config']).items() if k != 'num_classes'}
    out = convert_checkpoint('rapidnet_ti', ckpt, tmp_path / 'out', model_kwargs=kwargs)
    config = json.loads((out / 'config.json').read_text())
    assert config['num_classes'] == 7 and config['model_args']['distilled'] is False
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    with torch.no_grad():
        assert (model(x) - logits).abs().max().item() <= meta['atol']


# ---------------------------------------------------------------- training details, sizes, tracing

def test_official_drop_path_schedule():
    """Spec'd official values: the counter advances only after MLDC blocks (Ti, rate 0.1, 16 blocks)."""
    step = 0.1 / 15
    rates = official_drop_path_rates(0.1, [(2, 0), (2, 0), (6, 2), (2, 2)])
    expected = [[0.] * 2, [0.] * 2, [0.] * 6 + [0., step], [2 * step] * 2 + [2 * step, 3 * step]]
    assert [pytest.approx(r) for r in rates] == expected
    model = timm.create_model('rapidnet_s', drop_path_rate=0.1, device='meta')
    last = model.stages[3].blocks
    assert [b.drop_path1.drop_prob for b in last] == pytest.approx([0.1 * k / 23 for k in (3, 3, 3, 3, 4, 5)])


def test_any_input_size():
    """Every H, W >= 1, as in the official code: each stride-2 conv maps n to ceil(n / 2)."""
    model = timm.create_model('rapidnet_ti', widths=(8, 16, 24, 32), head_hidden_size=16, num_classes=3).eval()
    with torch.no_grad():
        for h, w in [(1, 1), (57, 43), (33, 2), (0, 7)][:3]:
            feats = model.forward_intermediates(torch.randn(1, 3, h, w), intermediates_only=True)
            assert [f.shape[-2:] for f in feats] == [(-(-h // r), -(-w // r)) for r in (4, 8, 16, 32)]
        assert model(torch.randn(0, 3, 37, 41)).shape == (0, 3)
    with pytest.raises(ValueError, match='expects 3 input channels'):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match='depths .* and widths .* same length'):
        RapidNet(depths=((1, 0),) * 3, widths=(8, 16, 24, 32))


@pytest.mark.slow
def test_compile_fullgraph_and_export_dynamic():
    """No graph break (dynamo, eager backend); export with dynamic batch / H / W. torch specialises a strided
    conv's output size against 1, so the dynamic sides start where every stage map is at least 2 (H, W >= 33)."""
    meta, official, x, logits = parity_fixture(FOLDER, NODIST)
    model = _load(official, meta['config'])
    compiled = torch.compile(model, fullgraph=True, backend='eager', dynamic=True)
    with torch.no_grad():
        assert (compiled(x) - logits).abs().max().item() <= meta['atol']
    from torch.export import Dim, export
    dims = {0: Dim('batch', min=1, max=32), 2: Dim('height', min=33, max=512), 3: Dim('width', min=33, max=512)}
    program = export(model, (x,), dynamic_shapes=(dims,)).module()
    for shape in [(2, 3, 57, 43), (3, 3, 96, 35), (1, 3, 224, 160)]:
        y = torch.randn(shape)
        with torch.no_grad():
            assert torch.allclose(program(y), model(y), atol=1e-5)

