"""Bad checkpoints on every loading path: a clear error naming what was expected, and no file destroyed.

Per family (the smallest variant of each, so new families join): timm's own ``pretrained=True`` path, run on the
meta device through ``pretrained_cfg_overlay=dict(state_dict=...)`` (the same ``load_pretrained`` code that serves
``file=``, ``local-dir:`` and ``hf-hub:``), keeps its ``in_chans`` adaptation and its head drop, and names a wrong
first conv or a head of another size. The other cases run once, on a tiny rednet26, through the file readers,
``tools/convert.py``, ``backbones.hub`` and ``tools/validate.py``.
"""
import importlib.util
import json
import os
import re
from pathlib import Path

import _train_common as common
import pytest
import timm
import torch
from conftest import SMALL_MODELS
from safetensors.torch import save_file

import backbones  # noqa: F401
from backbones import hub
from backbones._checkpoint import (
    CheckpointMismatchError,
    UnreadableCheckpointError,
    classifier_names,
    family_filter_fn,
    read_checkpoint_file,
    select_state_dict,
    unwrap_state_dict,
)
from backbones.convert import ConversionError, convert_checkpoint

ROOT = Path(__file__).resolve().parents[1]
tiny_data = common.tiny_data  # the tiny shapes dataset shared by the training tests
TINY = dict(stem_chs=16, widths=(32, 32, 64, 64), depths=(1, 1, 1, 1), group_channels=8)  # rednet26, ~17k params


def _load_meta(name, sd, **kwargs):
    """timm's pretrained path (filter, in_chans adaptation, head drop, load_state_dict), on the meta device."""
    return timm.create_model(name, pretrained=True, device='meta', pretrained_cfg_overlay=dict(state_dict=dict(sd)),
                             **kwargs)


def _listing(directory: Path):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob('*'))


# ---------------------------------------------------------------- every family, through timm's pretrained path

@pytest.mark.parametrize('name', SMALL_MODELS)
def test_first_conv_and_head_are_checked_and_timm_still_adapts(name):
    model = timm.create_model(name, device='meta')
    sd, filter_fn = dict(model.state_dict()), family_filter_fn(name)
    first_convs = model.pretrained_cfg['first_conv']  # a name, or a tuple of them (CrossViT: one per branch)
    keys = [c + '.weight' for c in ((first_convs,) if isinstance(first_convs, str) else first_convs)]
    adapted = _load_meta(name, sd, in_chans=1).state_dict()
    assert all(adapted[k].shape[1] == 1 for k in keys)  # timm adapts the stem(s) after the filter
    key = keys[0]
    want = tuple(sd[key].shape)
    got = (want[0] + 1,) + want[1:]
    with pytest.raises(CheckpointMismatchError, match=re.escape(f'{key} (checkpoint {got}, model {want})')):
        filter_fn(dict(sd, **{key: torch.empty(got, device='meta')}), model)
    heads = tuple(c + '.' for c in classifier_names(model))  # a distilled model has two
    sd10 = dict(sd, **{k: torch.empty(10, *v.shape[1:], device='meta') for k, v in sd.items() if k.startswith(heads)})
    with pytest.raises(CheckpointMismatchError, match=r'10-class classifier, the model num_classes=1000: build it '
                                                      r'with num_classes=10'):
        filter_fn(sd10, model)
    kept = _load_meta(name, sd10, num_classes=10)  # fits the asked-for head: kept, and the config says so
    assert kept.num_classes == 10 and kept.pretrained_cfg['num_classes'] == 10
    assert _load_meta(name, sd, num_classes=5).num_classes == 5  # timm drops the 1000-class head, by design


def test_head_kept_or_dropped_with_real_weights(tmp_path):
    """With a file: a head that fits num_classes keeps its trained values; another num_classes gets a new head."""
    src = timm.create_model('rednet26', num_classes=10, **TINY)
    path = tmp_path / 'ft.safetensors'
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    before = _listing(tmp_path)
    with pytest.raises(CheckpointMismatchError, match='10-class classifier, the model num_classes=1000'):
        timm.create_model('rednet26', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY)
    kept = timm.create_model('rednet26', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=10,
                             **TINY)
    assert torch.equal(kept.get_classifier().weight, src.get_classifier().weight)
    new = timm.create_model('rednet26', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=3,
                            **TINY)
    assert new.num_classes == 3 and torch.equal(new.stem.conv1.conv.weight, src.stem.conv1.conv.weight)
    one = dict(src.state_dict(), **{'stem.conv1.conv.weight': src.stem.conv1.conv.weight[:, :1].clone()})
    with pytest.raises(CheckpointMismatchError, match=r'takes 1 input channel\(s\) in the checkpoint and 3 in the '
                                                      r'model: build it with in_chans=1'):
        family_filter_fn('rednet26')(one, timm.create_model('rednet26', device='meta', num_classes=10, **TINY))
    headless = {k: v for k, v in src.state_dict().items() if not k.startswith('head.fc')}
    with pytest.raises(CheckpointMismatchError, match=r'no classifier \(a headless export\).*num_classes=0'):
        family_filter_fn('rednet26')(headless, timm.create_model('rednet26', device='meta', **TINY))
    assert _listing(tmp_path) == before


# ---------------------------------------------------------------- the file readers

@pytest.fixture(scope='module')
def tiny():
    return timm.create_model('rednet26', num_classes=4, **TINY).eval()


def test_not_a_checkpoint_is_not_called_truncated(tmp_path, tiny):
    cases = {
        'text.safetensors': (b'hello, I am not a checkpoint\n', r'text\.safetensors is not a safetensors checkpoint'),
        'text.pth': (b'hello, I am not a checkpoint\n', r'text\.pth is not a PyTorch or safetensors checkpoint'),
        'empty.pth': (b'', r'empty\.pth is empty \(0 bytes\)'),
    }
    for fname, (data, message) in cases.items():
        (tmp_path / fname).write_bytes(data)
        with pytest.raises(UnreadableCheckpointError, match=message) as e:
            read_checkpoint_file(tmp_path / fname)
        assert 'truncated' not in str(e.value)
    torch.save(tiny.state_dict(), tmp_path / 'zip.safetensors')  # a torch file under a safetensors name: read it
    assert read_checkpoint_file(tmp_path / 'zip.safetensors').keys() == tiny.state_dict().keys()
    with pytest.raises(hub.CorruptWeightsError, match='not a safetensors file: it is a zip archive'):
        hub.check_safetensors(tmp_path / 'zip.safetensors')  # the Hub's model.safetensors must be safetensors
    full = tmp_path / 'full.safetensors'
    save_file(tiny.state_dict(), str(full))
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(full.read_bytes()[:-100])
    with pytest.raises(UnreadableCheckpointError, match=r'cut\.safetensors is truncated'):
        read_checkpoint_file(cut)


def test_safetensors_header_of_any_badness_is_one_answer(tmp_path, export):
    """A header nested too deep for the JSON parser (RecursionError), or whose offsets are not numbers: the same
    one-line "not a safetensors file" as any unreadable header, from every reader."""
    deep = b'{"a": ' + b'[' * 200_000 + b']' * 200_000 + b'}'
    odd = json.dumps({'w': {'dtype': 'F32', 'shape': [1], 'data_offsets': ['0', '4']}}).encode()
    for name, header in (('deep', deep), ('odd', odd)):
        path = tmp_path / f'{name}.safetensors'
        path.write_bytes(len(header).to_bytes(8, 'little') + header + b'\0' * 4)
        with pytest.raises(UnreadableCheckpointError, match=rf'{name}\.safetensors is not a safetensors file') as e:
            read_checkpoint_file(path)
        assert '\n' not in str(e.value) and ('nested too deep' in str(e.value) if name == 'deep' else True)
    (export / 'model.safetensors').write_bytes((tmp_path / 'deep.safetensors').read_bytes())
    with pytest.raises(hub.CorruptWeightsError, match=r'model\.safetensors is not a safetensors file'):
        hub.load_model(export)


def test_non_dict_and_non_finite_checkpoints_are_refused(tmp_path, tiny):
    model = timm.create_model('rednet26', device='meta', num_classes=4, **TINY)
    filter_fn = family_filter_fn('rednet26')
    for obj, kind in ((torch.zeros(3), 'Tensor'), ([1, 2], 'list'), ('weights', 'str')):
        with pytest.raises(CheckpointMismatchError, match=f'the checkpoint is a {kind}, not a state dict'):
            filter_fn(obj, model)
    with pytest.raises(CheckpointMismatchError, match=r'stem\.conv1\.conv\.weight \(checkpoint a list, not a tensor'):
        filter_fn(dict(tiny.state_dict(), **{'stem.conv1.conv.weight': [1.0]}), model)
    for bad in (float('nan'), float('inf')):
        sd = {k: v.clone() for k, v in tiny.state_dict().items()}
        sd['stages.1.blocks.0.conv1.conv.weight'].view(-1)[3] = bad
        with pytest.raises(CheckpointMismatchError, match=r'non-finite values \(NaN or Inf\) in 1 tensor\(s\): '
                                                          r'stages\.1\.blocks\.0\.conv1\.conv\.weight'):
            filter_fn(sd, model)
    path = tmp_path / 'nan.pth'
    torch.save({'state_dict': sd}, path)
    with pytest.raises(CheckpointMismatchError, match='non-finite'):
        convert_checkpoint('rednet26', path, tmp_path / 'out', model_kwargs=TINY)
    with pytest.raises(CheckpointMismatchError, match='non-finite'):
        hub.build_model('rednet26', path, **TINY)
    torch.save([sd], tmp_path / 'list.pth')
    with pytest.raises(ConversionError, match=r'list\.pth holds a list, not a state dict'):
        convert_checkpoint('rednet26', tmp_path / 'list.pth', tmp_path / 'out', model_kwargs=TINY)
    assert _listing(tmp_path) == ['list.pth', 'nan.pth']


# ---------------------------------------------------------------- config.json of an export

@pytest.fixture
def export(tmp_path, tiny):
    from timm.models import save_for_hf
    folder = tmp_path / 'export'
    save_for_hf(tiny, folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize('edit,message', [
    (lambda c: '{"architecture": ', 'is not valid JSON'),
    (lambda c: json.dumps({k: v for k, v in c.items() if k != 'architecture'}), "no 'architecture'"),
    (lambda c: json.dumps(dict(c, architecture='someone_elses_net')), "architecture 'someone_elses_net' is not "
                                                                      "registered"),
    (lambda c: json.dumps(dict(c, architecture=7)), "'architecture' must be a model name"),
    (lambda c: json.dumps(dict(c, num_classes='four')), "'num_classes' must be a whole number >= 0, got 'four'"),
    (lambda c: json.dumps(dict(c, model_args=[1, 2])), "'model_args' must be a JSON object"),
    (lambda c: json.dumps(dict(c, label_names=['a', 'b'])), "'label_names' has 2 names for num_classes=4"),
    (lambda c: json.dumps(dict(c, pretrained_cfg=dict(c['pretrained_cfg'], input_size=[224, 224]))),
     "'input_size' must be \\[channels, height, width\\]"),
    (lambda c: json.dumps(dict(c, num_classes=1000, model_args=dict(c['model_args'], num_classes=1000))),
     r'says num_classes=1000, but the classifier head\.fc in model\.safetensors has 4 classes'),
    # model_args, checked against the entrypoint (a meta-device build): timm's own error named no file
    (lambda c: json.dumps(dict(c, model_args=dict(c['model_args'], no_such_arg=1))),
     r"model_args .* do not build rednet26: .*unexpected keyword argument 'no_such_arg'"),
    (lambda c: json.dumps(dict(c, model_args=dict(c['model_args'], num_classes='ten'))),
     r"do not build rednet26: rednet26: num_classes must be a whole number >= 0 \(0: no classifier\), got 'ten'"),
    (lambda c: json.dumps(dict(c, model_args=dict(c['model_args'], pretrained_cfg_overlay={'file': 'x'}))),
     r"model_args holds 'pretrained_cfg_overlay': an argument of timm\.create_model itself, not of the model"),
    (lambda c: '{"architecture": "rednet26", "x": ' + '[' * 100_000 + ']' * 100_000 + '}',
     r'is not valid JSON \(nested too deep to parse\)'),
])
def test_bad_config_json_names_the_file(export, edit, message):
    config = export / 'config.json'
    config.write_text(edit(json.loads(config.read_text())))
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    with pytest.raises(hub.HubError, match=message) as e:
        hub.load_model(f'local-dir:{export}')
    assert str(config) in str(e.value)
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before


def test_local_dir_head_through_timm(export):
    """``local-dir:`` with another num_classes: a new head by design (timm); the export's own size keeps it."""
    assert timm.create_model(f'local-dir:{export}', pretrained=True, num_classes=2).num_classes == 2
    assert hub.load_model(export).num_classes == 4


# ---------------------------------------------------------------- tools/convert.py

@pytest.fixture
def ckpt(tmp_path, tiny):
    path = tmp_path / 'ft.pth'
    torch.save({'state_dict': tiny.state_dict(), 'epoch': 3}, path)
    return path


def test_convert_overwrite_never_deletes_what_it_did_not_write(tmp_path, ckpt):
    out = tmp_path / 'out'
    before = _listing(tmp_path)
    with pytest.raises(FileExistsError, match=r'--out .*ft\.pth is the --checkpoint file, not a folder'):
        convert_checkpoint('rednet26', ckpt, ckpt, model_kwargs=TINY, overwrite=True)
    (tmp_path / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match=r'notes\.txt is a file, not a folder'):
        convert_checkpoint('rednet26', ckpt, tmp_path / 'notes.txt', model_kwargs=TINY, overwrite=True)
    with pytest.raises(FileExistsError, match=r'--checkpoint .*ft\.pth is inside --out'):
        convert_checkpoint('rednet26', ckpt, tmp_path, model_kwargs=TINY, overwrite=True)
    os.symlink(tmp_path, tmp_path / 'link')
    with pytest.raises(FileExistsError, match='is a symbolic link'):
        convert_checkpoint('rednet26', ckpt, tmp_path / 'link', model_kwargs=TINY, overwrite=True)
    os.unlink(tmp_path / 'link')
    assert _listing(tmp_path) == sorted(before + ['notes.txt'])
    # a killed conversion's temporary is removed by the next one; a live process's is not touched
    stale, live = tmp_path / '.out.tmp-999999999-deadbeef', tmp_path / f'.out.tmp-{os.getppid()}-cafe0001'
    stale.mkdir(), live.mkdir()
    convert_checkpoint('rednet26', ckpt, out, model_kwargs=TINY)
    assert not stale.exists() and live.exists()
    live.rmdir()
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'model.safetensors']


def test_convert_keeps_the_checkpoints_head_and_channels(tmp_path, tiny):
    sd = dict(tiny.state_dict(), **{'stem.conv1.conv.weight': tiny.stem.conv1.conv.weight[:, :1].clone()})
    path = tmp_path / 'gray.pth'
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError, match="classifier has 4 classes, num_classes=7 was asked"):
        convert_checkpoint('rednet26', path, tmp_path / 'o', model_kwargs=TINY, num_classes=7)
    with pytest.raises(CheckpointMismatchError, match='first conv takes 1 input channels, in_chans=3 was asked'):
        convert_checkpoint('rednet26', path, tmp_path / 'o', model_kwargs=dict(TINY, in_chans=3))
    assert not (tmp_path / 'o').exists()
    out = convert_checkpoint('rednet26', path, tmp_path / 'o', model_kwargs=TINY)  # in_chans=1, 4 classes inferred
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert model.num_classes == 4 and torch.equal(model.stem.conv1.conv.weight, sd['stem.conv1.conv.weight'])


# ---------------------------------------------------------------- every CLI: one line, non-zero exit

def _tool(name):
    spec = importlib.util.spec_from_file_location(f'tool_{name}', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _one_line(capsys, call):
    try:
        rc = call()
    except SystemExit as e:  # argparse errors
        rc = e.code
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith('error:')]
    assert rc not in (0, None) and len(errors) == 1 and 'Traceback' not in err and 'usage:' not in err, err
    return errors[0]


def test_every_tool_error_is_one_line(tmp_path, capsys, ckpt, tiny_data):
    (tmp_path / 'text.safetensors').write_text('not weights')
    convert = _tool('convert')
    out = ['--out', str(tmp_path / 'o')]
    cases = [
        (convert, ['--model', 'rednet26', '--checkpoint', str(tmp_path / 'text.safetensors'), *out],
         'is not a safetensors checkpoint'),
        (convert, ['--model', 'rednet26', '--checkpoint', str(ckpt), *out, '--model-kwargs', '{"stem_chs": 16,'],
         'argument --model-kwargs: not valid JSON'),
        (convert, ['--model', 'rednet26', '--checkpoint', str(ckpt), *out, '--model-kwargs', '{"nope": 1}'],
         "unexpected keyword argument 'nope'"),
        (convert, ['--model', 'rednet26', '--checkpoint', str(ckpt)], 'required: --out'),
        (_tool('flops'), ['no_such_model'], 'no_such_model'),
        (_tool('flops'), ['rednet26', '--input-size', '0'], '--input-size 0'),
        (_tool('push_to_hub'), ['rednet26', '--repo-id', 'org/x', '--checkpoint', str(tmp_path / 'missing.pth')],
         'checkpoint file not found'),
        (_tool('make_cards'), ['--dir'], 'argument --dir: expected one argument'),
        (_tool('make_configs'), ['sennet'], "unknown zoo family 'sennet'; known families: biformer"),
        (_tool('validate'), ['--checkpoint', str(tmp_path / 'text.safetensors'), '--model', 'rednet26',
                             '--data-dir', str(tiny_data)], 'is not a safetensors checkpoint'),
        (_tool('validate'), ['--model', 'rednet26', '-b', '0'], '-b/--batch-size 0: expected a whole number >= 1'),
        (_tool('train'), ['--epochs', 'x'], "argument --epochs: invalid int value: 'x'"),
    ]
    for main, argv, needle in cases:
        assert needle in _one_line(capsys, lambda main=main, argv=argv: main(argv)), argv
    assert not (tmp_path / 'o').exists()


def test_validate_names_a_head_that_does_not_fit(tmp_path, capsys, ckpt, export, tiny_data):
    validate = _tool('validate')
    data = ['--data-dir', str(tiny_data), '--workers', '0', '--num-classes', '10']
    line = _one_line(capsys, lambda: validate(['--checkpoint', str(ckpt), '--model', 'rednet26', *data,
                                               '--model-kwargs', *[f'{k}={v}' for k, v in TINY.items()]]))
    assert 'the checkpoint has a 4-class classifier, the model 10 classes' in line
    line = _one_line(capsys, lambda: validate(['--model', f'local-dir:{export}', *data]))
    assert '--num-classes 10: the weights of' in line and '4-class classifier' in line


@pytest.mark.parametrize('keys', [('state_dict',), ('state_dict', 'state_dict_ema'), ('model', 'model_ema'),
                                  ('model',), ('state_dict', 'model_ema'), ('model_ema',)])
@pytest.mark.parametrize('ema', ['auto', 'no'])
def test_container_policy_is_timms(tmp_path, keys, ema):
    """Which weights of a container: timm's answer (timm.models.load_state_dict, use_ema) is the oracle."""
    container = {k: {'w': torch.full((1,), float(i))} for i, k in enumerate(keys)}
    torch.save(container, tmp_path / 'ck.pth')
    if ema == 'no' and all(k.endswith('_ema') for k in keys):  # timm finds no raw weights; the zoo falls back
        assert select_state_dict(container, ema='no')[1] == 'ema'
        return
    want = timm.models.load_state_dict(str(tmp_path / 'ck.pth'), use_ema=ema == 'auto')
    got, kind = select_state_dict(container, ema=ema)
    assert torch.equal(got['w'], want['w'])
    assert kind == ('ema' if keys[int(got['w'].item())].endswith('_ema') else 'model')


RAPID_TINY = dict(depths=((1, 0), (1, 0), (1, 1), (1, 1)), widths=(16, 16, 32, 32), head_hidden_size=32)


def test_family_entry_is_read_by_every_entry_point_and_a_training_checkpoint_gives_ema(tmp_path):
    """RapidNet's release {'state_dict', 'state_dict_ema'}: conversion and fine-tuning read 'state_dict', as the
    official evaluation and pretrained=True do; a training checkpoint (it holds an optimizer) gives its EMA weights
    first, as timm's validation does."""
    from backbones.train.model import load_pretrained_path
    model = timm.create_model('rapidnet_ti', **RAPID_TINY).eval()
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    release, training = dict(state_dict=raw, state_dict_ema=ema), dict(state_dict=raw, state_dict_ema=ema,
                                                                         optimizer={}, epoch=3)
    key = 'stages.2.blocks.1.mixer.fc1.conv.weight'
    for ck, want in ((release, raw), (training, ema)):
        torch.save(ck, tmp_path / 'ck.pth')
        out = convert_checkpoint('rapidnet_ti', tmp_path / 'ck.pth', tmp_path / 'out', model_kwargs=RAPID_TINY,
                                 overwrite=True)
        converted = timm.create_model(f'local-dir:{out}', pretrained=True)
        assert torch.equal(converted.state_dict()[key], want[key])
        fresh = timm.create_model('rapidnet_ti', **RAPID_TINY)
        load_pretrained_path(fresh, tmp_path / 'ck.pth', log=False)
        assert torch.equal(fresh.state_dict()[key], want[key])
        assert torch.equal(family_filter_fn('rapidnet_ti')(ck, fresh)[key], want[key])


def test_container_policy_family_entry_and_ema_flags():
    """A family's official entry wins over EMA weights (RapidNet's evaluation reads 'state_dict', BiFormer's 'model');
    --use-ema without EMA weights is one line naming the file."""
    assert (backbones.get_family('rapidnet').checkpoint_key, backbones.get_family('biformer').checkpoint_key) == \
        ('state_dict', 'model')
    ck = {'state_dict': {'w': torch.zeros(1)}, 'state_dict_ema': {'w': torch.ones(1)}}
    assert select_state_dict(ck, prefer='state_dict')[0]['w'].item() == 0
    assert select_state_dict(ck)[0]['w'].item() == 1 and select_state_dict(ck, ema='yes')[1] == 'ema'
    assert select_state_dict(dict(ck, optimizer={}), prefer='state_dict')[0]['w'].item() == 1  # a training run's
    with pytest.raises(CheckpointMismatchError, match=r'^--use-ema: x\.pth holds no EMA weights \(state_dict_ema\)$'):
        select_state_dict({'state_dict': ck['state_dict']}, ema='yes', what='--use-ema: x.pth')
    assert unwrap_state_dict({'module.w': torch.zeros(1)}).keys() == {'w'}  # DDP / torch.compile prefixes go
