"""Hub push / pull through the real huggingface_hub client and timm hub code, against a loopback stand-in.

The server (tests/_fake_hub.py) listens on 127.0.0.1 only and is stopped when the module ends; huggingface_hub reads
HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE / HF_HUB_DISABLE_XET into ``huggingface_hub.constants`` at import, so the
``hub`` fixture patches those constants (and sets the environment for subprocesses). Xet is disabled: uploads take
the classic preupload + LFS batch + commit route (specs/hub.md §4 option C).
"""
import argparse
import copy
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import safetensors.torch
import timm
import torch
from _fake_hub import FakeHub
from conftest import SMALL_MODELS, input_side
from timm.models import save_for_hf

import backbones  # noqa: F401
from backbones import hub as bhub
from backbones._checkpoint import CheckpointMismatchError

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = 'rednet26'  # the smallest zoo variant (9M params): the one pushed through the fake Hub
TINY = dict(stem_chs=16, widths=(32, 32, 64, 64), depths=(1, 1, 1, 1), group_channels=8)  # ~17k params


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    srv = FakeHub(tmp_path_factory.mktemp('fake_hub')).start()
    yield srv
    srv.stop()
    assert not srv.errors, srv.errors


@pytest.fixture
def hub(server, tmp_path, monkeypatch):
    """Point the (already imported) huggingface_hub client at the loopback server, with a fresh cache."""
    cache = tmp_path / 'hf_cache'
    settings = dict(
        ENDPOINT=server.url,
        HUGGINGFACE_CO_URL_TEMPLATE=server.url + '/{repo_id}/resolve/{revision}/{filename}',
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE=False,
        HF_HUB_DISABLE_XET=True,
        HF_HUB_ETAG_TIMEOUT=5,
        HF_HUB_DOWNLOAD_TIMEOUT=5,
        AGENT_HARNESSES_PATH=str(tmp_path / 'agent_harnesses.json'),
    )
    for k, v in settings.items():
        monkeypatch.setattr(hf_constants, k, v)
    env = dict(HF_ENDPOINT=server.url, HF_HUB_CACHE=str(cache), HF_HUB_DISABLE_XET='1', HF_TOKEN='hf_fake',
               HF_HOME=str(tmp_path / 'hf_home'))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    return server


def _nontrivial(model):
    """Random BN statistics too, so that every buffer has to travel for the outputs to match."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model.eval()


def _out(model):
    side = input_side(model, 32)  # 32, or the next size the model's size rule accepts
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope='module')
def small_model():
    return _nontrivial(timm.create_model(MODEL, num_classes=4))


@pytest.fixture(scope='module')
def small_out(small_model):
    return _out(small_model)


def test_push_pull_identical_then_offline(hub, small_model, small_out, monkeypatch):
    labels = ['cat', 'dog', 'fox', 'owl']
    url = bhub.push(small_model, 'org/rednet-pets', label_names=labels, commit_message='first')
    assert '/org/rednet-pets/commit/' in str(url)
    commits = [r for r in hub.requests if r[1].startswith('/api/models/org/rednet-pets/commit/')]
    assert len(commits) == 1  # config, weights and card in ONE commit
    head = hub.branches['org/rednet-pets']['main']
    files = sorted(p.name for p in (hub.root / 'repos/org/rednet-pets' / head).iterdir())
    assert files == ['README.md', 'config.json', 'model.safetensors']  # safetensors only: no pickle

    folder = bhub.pull('org/rednet-pets')
    cfg = json.loads((folder / 'config.json').read_text())
    assert cfg['architecture'] == MODEL and cfg['num_classes'] == 4 and cfg['label_names'] == labels
    card = (folder / 'README.md').read_text()
    assert 'library_name: timm' in card and 'import backbones' in card and 'transformers' not in card

    model = timm.create_model('hf-hub:org/rednet-pets', pretrained=True)
    assert torch.equal(_out(model), small_out)  # bit-identical
    assert model.pretrained_cfg['label_names'] == labels

    # everything is cached now: offline reloads make no request at all
    n = len(hub.requests)
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    again = timm.create_model('hf-hub:org/rednet-pets', pretrained=True)
    assert _same_weights(again, small_model) and again.pretrained_cfg['label_names'] == labels
    assert bhub.pull('org/rednet-pets') == folder
    assert _same_weights(bhub.load_model('org/rednet-pets'), small_model)
    with pytest.raises(bhub.HubError, match='not in the Hugging Face cache'):
        bhub.pull('org/never-pulled')
    assert len(hub.requests) == n


@pytest.mark.slow  # a fresh interpreter importing torch + timm: ~6-20 s on 2 cores
def test_offline_env_in_fresh_process(hub, small_model):
    """HF_HUB_OFFLINE=1 as users set it (read at import), in a new interpreter: zero requests."""
    bhub.push(small_model, 'org/rednet-offline')
    bhub.pull('org/rednet-offline')
    n = len(hub.requests)
    code = ('import backbones, timm, torch, sys; '
            "m = timm.create_model('hf-hub:org/rednet-offline', pretrained=True).eval(); "
            'torch.save(m.state_dict(), sys.argv[1])')
    out = Path(os.environ['HF_HUB_CACHE']).parent / 'sd.pt'
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    subprocess.run([sys.executable, '-c', code, str(out)], env=env, check=True, timeout=120, cwd=REPO_ROOT)
    assert len(hub.requests) == n
    sd = torch.load(out, weights_only=True)
    assert all(torch.equal(sd[k], v) for k, v in small_model.state_dict().items())


def test_repush_updates_card(hub, small_model):
    bhub.push(small_model, 'org/rednet-card', label_names='a,b,c,d')
    first = (bhub.pull('org/rednet-card') / 'README.md').read_text()
    bhub.push(small_model, 'org/rednet-card', model_card='---\nlibrary_name: timm\n---\n# new card\n',
              commit_message='new card')
    folder = bhub.pull('org/rednet-card')
    assert first != (folder / 'README.md').read_text() == '---\nlibrary_name: timm\n---\n# new card\n'
    # and the generated card is rewritten too (timm's push_to_hf_hub would keep the old one)
    bhub.push(small_model, 'org/rednet-card', label_names=['w', 'x', 'y', 'z'])
    assert '**Label names:** w, x, y, z' in (bhub.pull('org/rednet-card') / 'README.md').read_text()


def test_push_train_checkpoint(hub, tmp_path):
    """A tools/train.py (timm CheckpointSaver) checkpoint: EMA weights, its head size, via the CLI."""
    trained = _nontrivial(timm.create_model(MODEL, num_classes=3))
    ema = copy.deepcopy(trained)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.9)
    ckpt = tmp_path / 'model_best.pth.tar'
    torch.save({'epoch': 3, 'arch': MODEL, 'state_dict': trained.state_dict(), 'state_dict_ema': ema.state_dict(),
                'optimizer': {'state': {}}, 'version': 2, 'args': argparse.Namespace(model=MODEL, lr=0.1),
                'metric': 0.5}, ckpt)
    labels = tmp_path / 'labels.txt'
    labels.write_text('red\ngreen\nblue\n')
    spec = importlib.util.spec_from_file_location('push_to_hub_cli', REPO_ROOT / 'tools' / 'push_to_hub.py')
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([MODEL, '--checkpoint', str(ckpt), '--repo-id', 'org/rednet-ckpt', '--label-names', str(labels),
                 '--commit-message', 'fine-tuned']) == 0
    model = timm.create_model('hf-hub:org/rednet-ckpt', pretrained=True)
    assert model.num_classes == 3 and model.pretrained_cfg['label_names'] == ['red', 'green', 'blue']
    assert _same_weights(model, ema)
    # a safetensors checkpoint too
    st = tmp_path / 'w.safetensors'
    safetensors.torch.save_file(trained.state_dict(), st)
    bhub.push(MODEL, 'org/rednet-st', checkpoint=st)
    assert _same_weights(bhub.load_model('org/rednet-st'), trained)


class _Payload:
    """Unpickling this runs code (writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f'open({self.marker!r}, "w").write("pwned")',))


def test_pickle_only_repo_refused(hub, tmp_path, small_model):
    marker = tmp_path / 'pwned'
    export = tmp_path / 'export'
    save_for_hf(small_model, export, safe_serialization=True)
    payload = dict(small_model.state_dict(), evil=_Payload(marker))
    hub.put_files('org/pickled', {'config.json': (export / 'config.json').read_bytes(),
                                  'pytorch_model.bin': _pickle_bytes(payload, tmp_path)})
    with pytest.raises(bhub.UnsafeWeightsError, match='only pickle weights .*pytorch_model.bin'):
        bhub.pull('org/pickled')
    with pytest.raises(bhub.UnsafeWeightsError):
        bhub.load_model('org/pickled')
    # plain timm gets there too, and its weights_only=True unpickler refuses the payload without running it
    with pytest.raises(RuntimeError, match='weights_only=True blocked .*builtins.exec'):
        timm.create_model('hf-hub:org/pickled', pretrained=True)
    assert not marker.exists()
    # a local folder with only the pickle: same refusal
    torch_bin = export / 'pytorch_model.bin'
    torch_bin.write_bytes(_pickle_bytes(payload, tmp_path))
    (export / 'model.safetensors').unlink()
    with pytest.raises(bhub.UnsafeWeightsError):
        bhub.load_model(f'local-dir:{export}')
    # and a pushed checkpoint with code is refused as well
    with pytest.raises(bhub.CorruptWeightsError, match='weights_only'):
        bhub.push(MODEL, 'org/never', checkpoint=torch_bin)
    assert not marker.exists() and 'org/never' not in hub.branches


def _pickle_bytes(obj, tmp_path):
    f = tmp_path / 'tmp.bin'
    torch.save(obj, f)
    return f.read_bytes()


def test_wrong_repo_id(hub, small_model):
    with pytest.raises(bhub.HubError, match="repository 'org/does-not-exist' not found"):
        bhub.pull('org/does-not-exist')
    with pytest.raises(bhub.HubError, match='invalid repo id'):
        bhub.pull('not a repo id!')
    with pytest.raises(bhub.HubError, match='invalid repo id'):
        bhub.push(small_model, 'no-slash-here/but/two')
    bhub.push(small_model, 'org/rednet-rev', private=True)
    assert hub.private['org/rednet-rev']
    commit = hub.branches['org/rednet-rev']['main']
    assert bhub.pull(f'org/rednet-rev@{commit}').name == commit  # a pinned revision
    with pytest.raises(bhub.HubError, match="no revision 'v9'"):
        bhub.pull('org/rednet-rev@v9')
    hub.put_files('org/empty', {'notes.txt': b'hi'})
    with pytest.raises(bhub.HubError, match='no config.json'):
        bhub.pull('org/empty')


def test_unregistered_architecture(hub, tmp_path, small_model):
    export = tmp_path / 'export'
    save_for_hf(small_model, export, safe_serialization=True)
    cfg = json.loads((export / 'config.json').read_text())
    cfg['architecture'] = 'someone_elses_net'
    (export / 'config.json').write_text(json.dumps(cfg))
    hub.put_files('org/foreign', {p.name: p.read_bytes() for p in export.iterdir()})
    with pytest.raises(bhub.UnregisteredArchitectureError, match='`import backbones` first'):
        bhub.pull('org/foreign')
    with pytest.raises(bhub.UnregisteredArchitectureError, match='`import backbones` first'):
        bhub.load_model(export)
    with pytest.raises(RuntimeError, match='Unknown model'):  # what plain timm says
        timm.create_model('hf-hub:org/foreign', pretrained=True)


def test_model_args_the_architecture_does_not_take(hub, tmp_path):
    """pull refuses a repo whose config.json model_args its entrypoint does not take, naming the file (timm's
    hf-hub: path fails later with a TypeError that names neither)."""
    export = tmp_path / 'export'
    save_for_hf(timm.create_model(MODEL, num_classes=3, **TINY), export, safe_serialization=True)
    cfg = json.loads((export / 'config.json').read_text())
    cfg['model_args']['no_such_arg'] = 1
    (export / 'config.json').write_text(json.dumps(cfg))
    hub.put_files('org/odd-args', {p.name: p.read_bytes() for p in export.iterdir()})
    with pytest.raises(bhub.HubError, match=r"config\.json of 'org/odd-args' \(.*config\.json\): model_args .* do "
                                            r"not build rednet26: .*unexpected keyword argument 'no_such_arg'") as e:
        bhub.pull('org/odd-args')
    assert '\n' not in str(e.value)


def test_truncated_safetensors(hub, tmp_path, small_model):
    export = tmp_path / 'export'
    save_for_hf(small_model, export, safe_serialization=True)
    weights = export / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:-1000])
    hub.put_files('org/truncated', {p.name: p.read_bytes() for p in export.iterdir()})
    with pytest.raises(bhub.CorruptWeightsError, match='truncated'):
        bhub.pull('org/truncated')
    with pytest.raises(bhub.CorruptWeightsError, match='truncated'):
        bhub.load_model(export)
    with pytest.raises(bhub.CorruptWeightsError, match='truncated'):
        bhub.push(MODEL, 'org/never', checkpoint=weights)
    weights.write_bytes(b'\x05\x00')
    with pytest.raises(bhub.CorruptWeightsError, match='not a safetensors file'):
        bhub.load_model(export)


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_local_dir_round_trip(name, tmp_path):
    model = _nontrivial(timm.create_model(name, num_classes=5))
    save_for_hf(model, tmp_path, safe_serialization=True, model_config={'label_names': list('abcde')})
    assert not (tmp_path / 'pytorch_model.bin').exists()
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True)
    assert type(loaded) is type(model) and loaded.pretrained_cfg['label_names'] == list('abcde')
    assert torch.equal(_out(loaded), _out(model))


def _go_offline(how, monkeypatch):
    if how == 'HF_HUB_OFFLINE':
        monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
        monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    else:  # the network is down: the endpoint is a port nothing listens on
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            url = f'http://127.0.0.1:{s.getsockname()[1]}'
        monkeypatch.setattr(hf_constants, 'ENDPOINT', url)
        template = url + '/{repo_id}/resolve/{revision}/{filename}'
        monkeypatch.setattr(hf_constants, 'HUGGINGFACE_CO_URL_TEMPLATE', template)
        monkeypatch.setenv('HF_ENDPOINT', url)


@pytest.mark.parametrize('how', ['HF_HUB_OFFLINE', 'endpoint unreachable'])
def test_offline_loads_from_the_cache_at_once_or_names_the_missing_repo(hub, tmp_path, monkeypatch, how):
    """A cached repo loads at once; a repo never pulled is one line naming it and saying the machine is offline.
    The repo has no model card, so the optional README.md is not cached either: huggingface_hub's own back-off on an
    uncached file takes ~23 s when the network is down (the bound below is a guard against such retry loops)."""
    small_model = _nontrivial(timm.create_model(MODEL, num_classes=3, **TINY))  # builds in milliseconds
    export = tmp_path / 'export'
    save_for_hf(small_model, export, safe_serialization=True)
    hub.put_files('org/rednet-nocard', {p.name: p.read_bytes() for p in export.iterdir()})
    folder = bhub.pull('org/rednet-nocard')
    _go_offline(how, monkeypatch)
    n = len(hub.requests)
    start = time.perf_counter()
    assert bhub.pull('org/rednet-nocard') == folder
    assert _same_weights(bhub.load_model('org/rednet-nocard'), small_model)
    assert _same_weights(timm.create_model('hf-hub:org/rednet-nocard', pretrained=True), small_model)
    with pytest.raises(bhub.HubError) as e:
        bhub.pull('org/never-pulled')
    assert time.perf_counter() - start < 5
    message = str(e.value)
    assert "repository 'org/never-pulled' is not in the Hugging Face cache and the machine is offline" in message
    assert '\n' not in message
    assert ('HF_HUB_OFFLINE=1' if how == 'HF_HUB_OFFLINE' else 'cannot be reached') in message
    assert len(hub.requests) == n  # offline: no request reached the Hub


def test_head_size_that_the_config_does_not_describe(hub, small_model, tmp_path):
    """config.json says 1000 classes, the weights have 4: pull names the file; timm's hf-hub: path says so too."""
    export = tmp_path / 'export'
    save_for_hf(small_model, export, safe_serialization=True)
    cfg = json.loads((export / 'config.json').read_text())
    cfg['model_args'].pop('num_classes', None)  # older timm exports have none: the top-level value decides
    (export / 'config.json').write_text(json.dumps(dict(cfg, num_classes=1000)))
    hub.put_files('org/rednet-lying', {p.name: p.read_bytes() for p in export.iterdir()})
    with pytest.raises(bhub.HubError, match=r"config\.json of 'org/rednet-lying' says num_classes=1000, but the "
                                            r"classifier head\.fc in model\.safetensors has 4 classes"):
        bhub.pull('org/rednet-lying')
    with pytest.raises(CheckpointMismatchError, match='4-class classifier, the model num_classes=1000'):
        timm.create_model('hf-hub:org/rednet-lying', pretrained=True)
    assert timm.create_model('hf-hub:org/rednet-lying', pretrained=True, num_classes=4).num_classes == 4


@pytest.mark.parametrize('how', ['HF_HUB_OFFLINE', 'endpoint unreachable'])
def test_pretrained_zoo_model_offline_in_one_probe(hub, tmp_path, monkeypatch, how):
    """``timm.create_model(<zoo name>, pretrained=True)`` whose weights come from the Hub, offline: cached weights
    load at once, from the cache; missing ones are one line naming the repo, HF_HUB_OFFLINE=1 and a local file (it
    used to wait ~48 s in huggingface_hub's retries, then say "check your connection" without naming the repo)."""
    small = _nontrivial(timm.create_model(MODEL, num_classes=3, **TINY))
    export = tmp_path / 'export'
    save_for_hf(small, export, safe_serialization=True)
    hub.put_files('org/rednet-weights', {'model.safetensors': (export / 'model.safetensors').read_bytes()})

    def create(repo):
        return timm.create_model(MODEL, pretrained=True, num_classes=3, **TINY,
                                 pretrained_cfg_overlay=dict(hf_hub_id=repo, num_classes=3))

    assert _same_weights(create('org/rednet-weights'), small)  # online: downloaded as usual
    _go_offline(how, monkeypatch)
    n, start = len(hub.requests), time.perf_counter()
    assert _same_weights(create('org/rednet-weights'), small)  # from the cache
    with pytest.raises(bhub.HubError) as e:
        create('org/never-pulled')
    assert time.perf_counter() - start < 5 and len(hub.requests) == n  # no request reached the Hub
    message = str(e.value)
    assert message.startswith("rednet26 (pretrained=True): its weights come from the Hugging Face Hub repository "
                               "'org/never-pulled', which is not in the cache, and the machine is offline"), message
    assert "HF_HUB_OFFLINE=1" in message and "pretrained_cfg_overlay=dict(file='<weights file>')" in message
    assert '\n' not in message
