"""Official checkpoint -> save_for_hf folder (backbones.convert, tools/convert.py) -> local-dir: load -> logits."""
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
from _oracle import random_model, timm_twin
from conftest import max_diff_f32
from safetensors.torch import load_file, save_file

import backbones
from backbones._checkpoint import CheckpointMismatchError
from backbones.convert import ConversionError, convert_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / 'fixtures' / 'involution' / 'rednet26_s32_b16_64x64'
SMALL_REDNET = dict(stem_chs=32, widths=(64, 128, 256, 512))  # the fixture's official config (see test_rednet)


@pytest.fixture(scope='module')
def rednet_fixture():
    tensors = load_file(str(FIXTURE.with_suffix('.safetensors')))
    meta = json.loads(FIXTURE.with_suffix('.json').read_text())
    official = {k[len('state_dict.'):]: v for k, v in tensors.items() if k.startswith('state_dict.')}
    return official, tensors['input'], tensors['logits'], meta['atol']


def _local_dir_logits(out: Path, x: torch.Tensor) -> torch.Tensor:
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    with torch.no_grad():
        return model(x)


def _only(tmp_path: Path, *names):
    """Nothing but ``names`` in ``tmp_path``: no output folder, no leftover temp folder."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


# ---------------------------------------------------------------- official layouts in official containers

def _save(sd, path: Path, container: str):
    if container == 'safetensors':
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif container == 'mmcls':
        torch.save({'meta': {'epoch': 130, 'mmcls_version': '0.12.0'}, 'state_dict': sd}, path)
    elif container == 'ema':  # a timm train checkpoint: EMA weights preferred, DataParallel prefix
        torch.save({'epoch': 3, 'state_dict_ema': {f'module.{k}': v for k, v in sd.items()}}, path)
    else:
        torch.save({container: sd} if container else sd, path)


@pytest.mark.parametrize('container,suffix', [('mmcls', '.pth'), ('ema', '.pth.tar'), ('safetensors', '.safetensors'),
                                              ('', '.bin')])
def test_rednet_official_checkpoint(tmp_path, rednet_fixture, container, suffix):
    """Official mmcls weights (fixture) -> folder -> local-dir: reproduces the official logits; 10 classes inferred."""
    official, x, logits, atol = rednet_fixture
    ckpt = tmp_path / f'rednet26_official{suffix}'
    _save(official, ckpt, container)
    out = convert_checkpoint('rednet26', ckpt, tmp_path / 'out', model_kwargs=SMALL_REDNET)
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'rednet26' and config['num_classes'] == 10
    assert config['model_args']['stem_chs'] == 32 and config['model_args']['widths'] == [64, 128, 256, 512]
    assert config['converted_from']['file'] == ckpt.name
    got = _local_dir_logits(out, x)
    assert got.shape == logits.shape
    assert (got - logits).abs().max().item() <= atol
    _only(tmp_path, ckpt.name, 'out')


# zoo name -> container the weights ship in (the oracle: its timm twin). Depths (2, 1, 1, 1) keep it fast and check
# that config.json's model_args rebuild a non-default architecture; the full-depth mappings are in test_<family>.py.
DEPTHS = (2, 1, 1, 1)
TIMM_FAMILIES = {
    'se_resnet50': ('state_dict', '.pth'),
    'sknet50': ('model', '.pth'),
    'res2net50': ('safetensors', '.safetensors'),
}


@pytest.mark.parametrize('name', sorted(TIMM_FAMILIES))
def test_timm_family_checkpoint(tmp_path, name):
    """timm / official-layout weights (fan-in re-drawn) -> folder -> local-dir: gives the oracle's logits."""
    oracle_name, (container, suffix) = timm_twin(name), TIMM_FAMILIES[name]
    oracle = random_model(oracle_name, layers=list(DEPTHS))
    ckpt = tmp_path / f'{oracle_name}{suffix}'
    _save(oracle.state_dict(), ckpt, container)
    out = convert_checkpoint(name, ckpt, tmp_path / 'out', model_kwargs=dict(depths=DEPTHS))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = oracle(x)
    del oracle
    got = _local_dir_logits(out, x)
    assert max_diff_f32(got, expected) <= 1e-5
    config = json.loads((out / 'config.json').read_text())
    assert config['num_classes'] == 1000 and config['model_args']['depths'] == list(DEPTHS)


# ---------------------------------------------------------------- bad input: clear errors, nothing written

@pytest.fixture
def rednet_ckpt(tmp_path, rednet_fixture):
    ckpt = tmp_path / 'rednet26.pth'
    _save(rednet_fixture[0], ckpt, 'mmcls')
    return ckpt


def test_checkpoint_of_another_family(tmp_path, rednet_ckpt):
    with pytest.raises(CheckpointMismatchError, match=r'rednet26\.pth is not a se_resnet50 checkpoint(.|\n)*'
                                                      r'(missing|unexpected) keys'):
        convert_checkpoint('se_resnet50', rednet_ckpt, tmp_path / 'out')
    _only(tmp_path, rednet_ckpt.name)


def test_wrong_num_classes(tmp_path, rednet_ckpt):
    with pytest.raises(CheckpointMismatchError, match="classifier has 10 classes, num_classes=5"):
        convert_checkpoint('rednet26', rednet_ckpt, tmp_path / 'out', model_kwargs=SMALL_REDNET, num_classes=5)
    _only(tmp_path, rednet_ckpt.name)


def test_unknown_model_lists_close_matches(tmp_path, rednet_ckpt):
    with pytest.raises(KeyError, match=r"unknown zoo model 'rednet27'.*did you mean .*rednet26"):
        convert_checkpoint('rednet27', rednet_ckpt, tmp_path / 'out')
    _only(tmp_path, rednet_ckpt.name)


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
def test_truncated_file(tmp_path, rednet_fixture, suffix):
    full = tmp_path / f'full{suffix}'
    _save(rednet_fixture[0], full, 'safetensors' if suffix == '.safetensors' else 'state_dict')
    cut = tmp_path / f'cut{suffix}'
    cut.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
    full.unlink()
    with pytest.raises(ConversionError, match=r'cut\.(safetensors|pth).*(truncated|corrupt)'):
        convert_checkpoint('rednet26', cut, tmp_path / 'out', model_kwargs=SMALL_REDNET)
    _only(tmp_path, cut.name)


class _CodePayload:
    """Unpickling this would run a shell command (it must never be unpickled)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_pickle_with_code_is_refused(tmp_path, rednet_fixture):
    marker = tmp_path / 'payload_ran'
    ckpt = tmp_path / 'evil.pth'
    torch.save({'state_dict': rednet_fixture[0], 'meta': _CodePayload(marker)}, ckpt)
    with pytest.raises(ConversionError, match=r'refusing to load .*evil\.pth.*would run code'):
        convert_checkpoint('rednet26', ckpt, tmp_path / 'out', model_kwargs=SMALL_REDNET)
    assert not marker.exists()
    _only(tmp_path, ckpt.name)


def test_existing_out_dir_needs_overwrite(tmp_path, rednet_ckpt):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('good')
    with pytest.raises(FileExistsError, match='overwrite'):
        convert_checkpoint('rednet26', rednet_ckpt, out, model_kwargs=SMALL_REDNET)
    # --overwrite never deletes what a conversion did not write
    with pytest.raises(FileExistsError, match=r'holds files a conversion does not write \(keep\.txt\)'):
        convert_checkpoint('rednet26', rednet_ckpt, out, model_kwargs=SMALL_REDNET, overwrite=True)
    assert [p.name for p in out.iterdir()] == ['keep.txt'] and (out / 'keep.txt').read_text() == 'good'
    (out / 'keep.txt').unlink()
    convert_checkpoint('rednet26', rednet_ckpt, out, model_kwargs=SMALL_REDNET, overwrite=True)
    first = (out / 'model.safetensors').read_bytes()
    convert_checkpoint('rednet26', rednet_ckpt, out, model_kwargs=SMALL_REDNET, overwrite=True)  # replaces itself
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'model.safetensors']
    assert (out / 'model.safetensors').read_bytes() == first
    _only(tmp_path, rednet_ckpt.name, 'out')


def test_failed_write_leaves_nothing(tmp_path, rednet_ckpt, monkeypatch):
    """A failure half-way through writing (an error or Ctrl-C) removes the temp folder and keeps the previous
    output."""
    from backbones import hub
    old = convert_checkpoint('rednet26', rednet_ckpt, tmp_path / 'out', model_kwargs=SMALL_REDNET)
    before = {p.name: p.read_bytes() for p in old.iterdir()}

    for exc in (OSError('disk full'), KeyboardInterrupt()):
        def half_write(model, save_directory, exc=exc, **kwargs):
            (Path(save_directory) / 'model.safetensors').write_bytes(b'partial')
            raise exc

        monkeypatch.setattr(hub, 'save_for_hf', half_write)  # the writer convert uses
        with pytest.raises(type(exc)):
            convert_checkpoint('rednet26', rednet_ckpt, tmp_path / 'a' / 'b' / 'out', model_kwargs=SMALL_REDNET)
        _only(tmp_path, rednet_ckpt.name, 'out')  # not even the parents it created
        with pytest.raises(type(exc)):
            convert_checkpoint('rednet26', rednet_ckpt, old, model_kwargs=SMALL_REDNET, overwrite=True)
        assert {p.name: p.read_bytes() for p in old.iterdir()} == before
        _only(tmp_path, rednet_ckpt.name, 'out')


# ---------------------------------------------------------------- the CLI and --push

def _cli():
    spec = importlib.util.spec_from_file_location('convert_cli', ROOT / 'tools' / 'convert.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli(tmp_path, rednet_ckpt, rednet_fixture, capsys, monkeypatch):
    main = _cli()
    out = tmp_path / 'out'
    args = ['--model', 'rednet26', '--checkpoint', str(rednet_ckpt), '--out', str(out),
            '--model-kwargs', json.dumps(SMALL_REDNET)]
    assert main(args) == 0
    assert (_local_dir_logits(out, rednet_fixture[1]) - rednet_fixture[2]).abs().max().item() <= rednet_fixture[3]
    capsys.readouterr()
    assert main(args) == 1
    assert 'already exists' in capsys.readouterr().err
    assert main(['--model', 'se_resnet50', '--checkpoint', str(rednet_ckpt), '--out', str(tmp_path / 'o2')]) == 1
    err = capsys.readouterr().err
    assert 'is not a se_resnet50 checkpoint' in err and err.count('\n') == 1 and err.startswith('error: ')
    assert not (tmp_path / 'o2').exists()

    pushed = []
    fake_hub = types.ModuleType('backbones.hub')
    fake_hub.push = lambda model, repo_id, **kw: pushed.append((model.num_classes, repo_id, kw))
    fake_hub.save_for_hf = importlib.import_module('backbones.hub').save_for_hf  # the real writer: only push is fake
    monkeypatch.setitem(sys.modules, 'backbones.hub', fake_hub)
    monkeypatch.setattr(backbones, 'hub', fake_hub, raising=False)
    assert main(args + ['--overwrite', '--push', 'org/rednet26-small', '--private']) == 0
    assert pushed == [(10, 'org/rednet26-small', {'private': True, 'checkpoint': str(rednet_ckpt)})]
