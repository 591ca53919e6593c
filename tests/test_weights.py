"""``pretrained=True`` end to end: official files in other frameworks' formats (a TensorFlow checkpoint archive for
MOAT, a PaddlePaddle ``.pdparams`` for RedNet, both written by the real frameworks: tests/fixtures/moat_tf,
tests/fixtures/rednet_paddle) served by a loopback HTTP server -> download -> read -> convert -> cache -> the
official logits; every way the download goes wrong is one line and leaves nothing half-written; variants without a
download answer with a line that helps; ``list_pretrained`` and the status counts."""
import json
import time
import types
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from _file_server import FileServer
from huggingface_hub import constants
from huggingface_hub import file_download as hf_file_download
from safetensors.torch import load_file
from test_moat import _kwargs_from_official

import backbones
from backbones.weights import NoPretrainedWeightsError, PretrainedWeightsError, converted_path, weights_info

FIXTURES = Path(__file__).parent / 'fixtures'
MOAT_TAR = FIXTURES / 'moat_tf' / 'moat_fx_global_w_position_embedding.tar.gz'
MOAT_PATH = '/gresearch/tf-deeplab/checkpoint/moat_fx_global_w_position_embedding.tar.gz'
PADDLE = FIXTURES / 'rednet_paddle' / 'rednet26_s32_b16'
PADDLE_PATH = '/dygraph/RedNet26_pretrained.pdparams'
SMALL_REDNET = dict(stem_chs=32, widths=(64, 128, 256, 512))  # the Paddle fixture's narrowed RedNet-26


@pytest.fixture(scope='module')
def moat():
    """The official-code fixture whose weights the TF checkpoint holds: kwargs, input, official TF logits."""
    meta = json.loads((FIXTURES / 'moat' / 'moat_fx_global.json').read_text())
    t = load_file(str(FIXTURES / 'moat' / 'moat_fx_global.safetensors'))
    return _kwargs_from_official(meta), t['input'], t['logits'], meta['atol']


@pytest.fixture(scope='module')
def paddle():
    """PaddleClas's forward of the .pdparams weights (logits |max| ~0.45)."""
    f = np.load(PADDLE.with_suffix('.npz'))
    return torch.from_numpy(f['input']), torch.from_numpy(f['logits'])


@pytest.fixture
def server():
    s = FileServer().start()
    s.files[MOAT_PATH] = MOAT_TAR.read_bytes()
    s.files[PADDLE_PATH] = PADDLE.with_suffix('.pdparams').read_bytes()
    yield s
    s.stop()


@pytest.fixture
def no_retry_wait(monkeypatch):
    """huggingface_hub's http_get waits 1 s before each resume of a dropped transfer: not in tests."""
    fast = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith('_')})
    fast.sleep = lambda s: None
    monkeypatch.setattr(hf_file_download, 'time', fast)


def _moat(server, cache, kwargs, path=MOAT_PATH, **extra):
    """``tiny_moat_0`` in the fixture's reduced config, pretrained from the loopback server's copy of the file (a
    mirror URL: the overlay keeps the registry cfg's everything else; 10 classes stand for the release's 1000)."""
    overlay = dict(url=server.url(path), num_classes=kwargs['num_classes'])
    return timm.create_model('tiny_moat_0', pretrained=True, pretrained_cfg_overlay=overlay, cache_dir=str(cache),
                             **dict(kwargs, **extra))


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _files(folder: Path):
    """Every file under ``folder`` (relative), lock files aside."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file() and '.locks' not in p.parts)


# ---------------------------------------------------------------- the official files, read and converted

def test_moat_tf_archive_to_official_logits(moat, tmp_path):
    """TF checkpoint (tf.compat.v1 Saver, in a .tar.gz as released) -> reader -> converter -> the logits of the
    official TF code. The plain variables are used, not the EMA copies (x0.9 in the fixture), and the optimizer
    slots and global_step are dropped."""
    kwargs, x, logits, atol = moat
    from backbones._checkpoint import read_checkpoint_file
    from backbones.models.moat import checkpoint_filter_fn
    raw = read_checkpoint_file(MOAT_TAR)
    assert 'global_step' not in raw and not any(k.endswith('/Momentum') for k in raw)  # training state: not read
    ema = {k for k in raw if k.endswith('/ExponentialMovingAverage')}
    assert ema == {f'{k}/ExponentialMovingAverage' for k in raw if k not in ema and 'moving_' not in k}
    model = timm.create_model('tiny_moat_0', **kwargs)
    model.load_state_dict(checkpoint_filter_fn(raw, model))
    assert torch.allclose(_logits(model, x), logits, rtol=1e-4, atol=atol)


def test_paddle_pdparams_to_paddle_logits(paddle):
    """paddle.save'd PaddleClas RedNet -> restricted unpickler -> converter -> PaddleClas's logits."""
    x, logits = paddle
    from backbones._checkpoint import read_checkpoint_file
    from backbones.models.rednet import checkpoint_filter_fn
    raw = read_checkpoint_file(PADDLE.with_suffix('.pdparams'))
    assert 'stem.0.bn._mean' in raw and raw['fc.weight'].shape == (512, 10)  # PaddleClas names, Linear [in, out]
    model = timm.create_model('rednet26', num_classes=10, **SMALL_REDNET)
    model.load_state_dict(checkpoint_filter_fn(raw, model))
    assert torch.allclose(_logits(model, x), logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('form', ['archive', 'folder', 'index', 'pdparams'])
def test_convert_tool_takes_foreign_files(form, moat, paddle, tmp_path):
    """tools/convert.py's path with the archive, its unpacked folder, the .index, or a .pdparams."""
    import tarfile

    from backbones.convert import convert_checkpoint
    if form == 'pdparams':
        name, src, (x, logits), atol = 'rednet26', PADDLE.with_suffix('.pdparams'), paddle, 1e-5
        kwargs = SMALL_REDNET
    else:
        kwargs, x, logits, atol = moat
        kwargs = {k: v for k, v in kwargs.items() if k != 'num_classes'}
        name, src = 'tiny_moat_0', MOAT_TAR
        if form != 'archive':
            with tarfile.open(MOAT_TAR) as tar:
                tar.extractall(tmp_path / 'unpacked', filter='data')
            src = tmp_path / 'unpacked' / 'moat_fx_global_w_position_embedding'
            src = src / 'model.ckpt.index' if form == 'index' else src
    out = convert_checkpoint(name, src, tmp_path / 'out', model_kwargs=kwargs)
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert model.num_classes == 10
    assert torch.allclose(_logits(model, x), logits, rtol=1e-4, atol=atol)


def test_local_foreign_file_through_pretrained_cfg_overlay(moat, tmp_path):
    """timm's ``pretrained_cfg_overlay=dict(file=...)`` takes the downloaded archive as it is; nothing stays behind."""
    kwargs, x, logits, atol = moat
    model = timm.create_model('tiny_moat_0', pretrained=True, cache_dir=str(tmp_path), **kwargs,
                              pretrained_cfg_overlay=dict(file=str(MOAT_TAR), num_classes=kwargs['num_classes']))
    assert torch.allclose(_logits(model, x), logits, rtol=1e-4, atol=atol)
    assert model.pretrained_cfg['file'] == str(MOAT_TAR)
    assert _files(tmp_path) == []


@pytest.mark.parametrize('name', ['rednet26', 'rednet38', 'rednet50', 'rednet101', 'rednet152'])
def test_every_paddleclas_key_maps(name):
    """Full-size PaddleClas key sets (the official module tree, named as the Paddle fixture shows PaddleClas names
    it: no ``backbone.``, ``fc.``, BN ``_mean`` / ``_variance``, no step counters, Linear ``[in, out]``) convert one
    to one onto our keys and shapes, on the meta device."""
    from _oracle import assert_same_layout

    from backbones.models.rednet import checkpoint_filter_fn
    manifest = json.loads((FIXTURES / 'involution' / f'manifest_{name}.json').read_text())['keys']
    paddle_sd = {}
    for k, shape in manifest.items():
        if k.endswith('num_batches_tracked'):
            continue
        k = k.replace('backbone.', '').replace('head.fc.', 'fc.').replace('running_mean', '_mean')
        k = k.replace('running_var', '_variance')
        paddle_sd[k] = torch.empty(shape[::-1] if k == 'fc.weight' else shape, device='meta')
    model = timm.create_model(name, device='meta')
    sd = checkpoint_filter_fn(paddle_sd, model)
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
    assert len(sd) == len(paddle_sd) == len(ours)
    assert_same_layout(sd, ours)


# ---------------------------------------------------------------- pretrained=True: download, convert, cache

def test_download_convert_cache_then_offline(server, moat, paddle, tmp_path, monkeypatch):
    kwargs, x, logits, atol = moat
    cache = tmp_path / 'cache'
    model = _moat(server, cache, kwargs)
    assert torch.allclose(_logits(model, x), logits, rtol=1e-4, atol=atol)
    converted = converted_path('tiny_moat_0.in1k', cache)
    assert _files(cache) == sorted([MOAT_TAR.name, str(converted.relative_to(cache))])  # the download, its conversion
    assert model.pretrained_cfg['file'] == str(converted)

    # the second load: offline, and the TF file unreadable -- only the safetensors conversion is read
    n_requests = len(server.requests)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr('backbones.formats.read_foreign', lambda *a, **k: pytest.fail('read the TF file again'))
    again = _moat(server, cache, kwargs)
    assert torch.equal(_logits(again, x), _logits(model, x)) and len(server.requests) == n_requests
    # timm's adaptations still apply: a new head, features_only
    tuned = _moat(server, cache, kwargs, num_classes=3)
    assert tuned.head.fc.out_features == 3 and torch.equal(tuned.stem.conv0.weight, model.stem.conv0.weight)
    feats = _moat(server, cache, kwargs, features_only=True)
    assert len(feats(x)) == len(model.feature_info) == 5  # MOAT's stem and its four stages

    # RedNet from its .pdparams, online again
    monkeypatch.undo()
    x, logits = paddle
    rednet = timm.create_model('rednet26', pretrained=True, cache_dir=str(cache), num_classes=10, **SMALL_REDNET,
                               pretrained_cfg_overlay=dict(url=server.url(PADDLE_PATH), num_classes=10))
    assert torch.allclose(_logits(rednet, x), logits, rtol=1e-4, atol=1e-5)
    assert converted_path('rednet26.in1k', cache).is_file()


def test_offline_without_cache_is_one_line(server, moat, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(PretrainedWeightsError, match=r'^tiny_moat_0: .*not in the cache .*HF_HUB_OFFLINE=1 forbids '
                                                     r'downloading it from http://127\.0\.0\.1') as e:
        _moat(server, tmp_path, moat[0])
    assert '\n' not in str(e.value) and server.requests == [] and _files(tmp_path) == []


def test_interrupted_transfer_resumes(server, moat, tmp_path, no_retry_wait, monkeypatch):
    """A connection that drops mid-file: huggingface_hub's transfer resumes with a Range request in the same call;
    when it keeps dropping, the received bytes wait in <name>.incomplete and the next call resumes from there."""
    kwargs, x, logits, atol = moat
    monkeypatch.setattr(constants, 'DOWNLOAD_CHUNK_SIZE', 1 << 16)  # written in 64 KiB steps (10 MiB: the fixture
    size = len(server.files[MOAT_PATH])                              # is too small to be cut between two writes)
    server.cuts[MOAT_PATH] = [size // 3]
    model = _moat(server, tmp_path / 'a', kwargs)
    first, resumed = server.gets(MOAT_PATH)
    assert first is None and resumed == f'bytes={size // 3 // (1 << 16) * (1 << 16)}-'
    assert torch.allclose(_logits(model, x), logits, rtol=1e-4, atol=atol)

    server.requests.clear()
    server.cuts[MOAT_PATH] = [100_000] + [0] * 10  # 100 kB, then the connection dies at once, again and again
    with pytest.raises(PretrainedWeightsError, match=r'^tiny_moat_0: download of .* failed .*bytes received are '
                                                     r'kept in .*\.incomplete and the next attempt resumes') as e:
        _moat(server, tmp_path / 'b', kwargs)
    assert '\n' not in str(e.value)
    partial = tmp_path / 'b' / f'{MOAT_TAR.name}.incomplete'
    assert _files(tmp_path / 'b') == [partial.name]  # no archive under its final name, no conversion
    have = partial.stat().st_size
    assert 0 < have < size
    server.cuts[MOAT_PATH] = []
    server.requests.clear()
    model = _moat(server, tmp_path / 'b', kwargs)
    assert server.gets(MOAT_PATH) == [f'bytes={have}-']
    assert torch.allclose(_logits(model, x), logits, rtol=1e-4, atol=atol)


def _tar_gz(members):
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize('case,served,message', [
    ('404', None, r'cannot download http://\S+: HTTP 404'),
    ('truncated', lambda b: b[:len(b) // 2], r'cannot be used and was removed from the cache \(.*is truncated or not a '
                                             r'\.tar\.gz / \.tar archive'),
    ('html', lambda b: b'<html><body>Access denied</body></html>\n' * 3,
     r'cannot be used .*is not a PyTorch or safetensors checkpoint: it starts with'),
    ('no checkpoint', lambda b: _tar_gz([('release/README.md', b'weights moved')]),
     r'holds no TensorFlow checkpoint \(no \.index member\); its files: release/README\.md'),
    ('traversal', lambda b: _tar_gz([('../../evil.index', b'x'), ('model.ckpt.index', b'y')]),
     r"refusing moat_fx_global_w_position_embedding\.tar\.gz: its member '\.\./\.\./evil\.index' would be written "
     r"outside"),
    ('empty index', lambda b: _tar_gz([('x/model.ckpt.index', b'')]),
     r'truncated or not a TensorFlow checkpoint index'),
])
def test_bad_downloads_are_one_line_and_leave_nothing(server, moat, tmp_path, case, served, message):
    if served is None:
        del server.files[MOAT_PATH]
    else:
        server.files[MOAT_PATH] = served(server.files[MOAT_PATH])
    with pytest.raises(PretrainedWeightsError, match=message) as e:
        _moat(server, tmp_path, moat[0])
    assert str(e.value).startswith('tiny_moat_0: ') and '\n' not in str(e.value)
    assert _files(tmp_path) == []  # no download, no partial file, no unpacked member, no conversion
    assert not (tmp_path.parent / 'evil.index').exists()


def test_wrong_model_in_the_archive(server, moat, tmp_path):
    """A checkpoint of another MOAT (tiny_moat_0's full-size archive for the reduced config) fails the strict key
    check in one line and is removed."""
    kwargs = dict(moat[0], embed_dims=(16, 24, 32, 64))
    with pytest.raises(PretrainedWeightsError, match=r'^tiny_moat_0: the file downloaded .* cannot be used .*does not '
                                                     r'fit tiny_moat_0: .*shape mismatches') as e:
        _moat(server, tmp_path, kwargs)
    assert '\n' not in str(e.value) and _files(tmp_path) == []


# ---------------------------------------------------------------- the honest answer, and the list

NOT_AUTOMATIC = {
    'manual': ['biformer_base', 'biformer_small', 'biformer_stl', 'biformer_tiny'],
    'none': ['convit_b_plus', 'convit_s_plus', 'convit_ti_plus', 'davit_g', 'davit_h', 'davit_l', 'parcnetv2_base',
             'parcnetv2_small', 'parcnetv2_tiny', 'parcnetv2_xt', 'sknet101', 'tic_base', 'tic_small', 'tic_tiny'],
}


def test_status_of_every_variant():
    """84 of the 102 variants download automatically; the rest are the ones the official releases leave out."""
    status = {n: weights_info(n).status for n in backbones.list_models()}
    assert len(status) == 102
    assert sorted(n for n, s in status.items() if s == 'manual') == NOT_AUTOMATIC['manual']
    assert sorted(n for n, s in status.items() if s == 'none') == NOT_AUTOMATIC['none']
    assert sum(s == 'automatic' for s in status.values()) == 84
    for info in backbones.list_pretrained():
        assert info.model.split('.')[0] in status and info.format or info.status == 'none'
        if info.status == 'automatic':
            assert info.source.startswith(('https://', 'hf-hub:')) and info.license
    for name in backbones.list_models('*moat*') + backbones.list_models('rednet*'):
        info = weights_info(name)
        assert info.status == 'automatic' and ('TensorFlow' in info.format or 'PaddlePaddle' in info.format)
        assert timm.list_models(name, pretrained=True) == [f'{name}.{info.model.split(".")[1]}']  # timm: pretrained


@pytest.mark.parametrize('name', NOT_AUTOMATIC['manual'] + NOT_AUTOMATIC['none'])
def test_no_download_answers_in_one_line(name):
    with pytest.raises(NoPretrainedWeightsError) as e:
        timm.create_model(name, pretrained=True)
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith(name) and weights_info(name).note in msg
    if name in NOT_AUTOMATIC['manual']:
        assert 'https://1drv.ms/' in msg
        assert f"timm.create_model('{name}', pretrained=True, pretrained_cfg_overlay=dict(file=" in msg
        assert f'python tools/convert.py --model {name} --checkpoint' in msg
    else:
        assert 'pretrained=False' in msg
