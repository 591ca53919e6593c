"""The training loop (backbones.train): what a run writes, checkpoints, resume, fine-tuning, defaults, data order."""
import logging
import os
import struct
from pathlib import Path

import _train_common as common
import pytest
import timm
import torch
import yaml
from _train_common import TINY_MODEL, load_weights_only, summary_rows, tiny_argv

import backbones  # noqa: F401
from backbones.train import (
    EMBEDDED_DEFAULTS,
    CheckpointError,
    apply_run_defaults,
    args_to_yaml,
    build_parser,
    explicit_keys,
    main,
    parse_args,
)
from backbones.train import checkpoint as ckpt_mod
from backbones.train.checkpoint import atomic_save, export_for_hf
from backbones.train.data import set_loader_epoch
from backbones.train.model import create_train_model

# fixtures shared by the training test files
tiny_data = common.tiny_data
tiny_run = common.tiny_run


CHECKPOINT_KEYS = {'epoch', 'arch', 'version', 'state_dict', 'state_dict_ema', 'optimizer', 'scheduler', 'args',
                   'metric', 'rng', 'saver', 'data_config', 'class_names', 'loader'}


# --- what a run writes ----------------------------------------------------------------------------------------------
def test_run_writes_summary_args_plot_checkpoints_and_export(tiny_run):
    run_dir, argv = tiny_run
    names = {p.name for p in run_dir.iterdir()}
    assert {'args.yaml', 'summary.csv', 'summary.png', 'last.pth.tar', 'model_best.pth.tar', 'best'} <= names
    assert not [n for n in names if n.startswith('.') or n.startswith('tmp')], 'temporary files left behind'
    # --checkpoint-hist 1: one ranked epoch checkpoint kept
    assert len([n for n in names if n.startswith('checkpoint-')]) == 1

    rows = summary_rows(run_dir)
    assert [int(r['epoch']) for r in rows] == [0, 1]
    assert {'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'eval_ema_top1', 'lr'} <= set(rows[0])

    png = (run_dir / 'summary.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    assert struct.unpack('>II', png[16:24]) == (960, 400)

    # args.yaml loads back through the parser (a recipe that reruns the experiment)
    args, _ = parse_args(['-c', str(run_dir / 'args.yaml')])
    assert args.model == 'rednet26' and args.model_ema and args.epochs == 2 and args.checkpoint_hist == 1
    assert yaml.safe_load((run_dir / 'args.yaml').read_text())['model_kwargs']['widths'] == [32, 32, 64, 64]


def test_checkpoint_is_timm_compatible_and_weights_only(tiny_run):
    run_dir, _ = tiny_run
    ck = load_weights_only(run_dir / 'last.pth.tar')  # plain weights_only, no allow-listed classes
    assert CHECKPOINT_KEYS <= set(ck)
    assert ck['epoch'] == 1 and ck['arch'] == 'rednet26' and ck['version'] == 2
    assert isinstance(ck['args'], dict) and ck['args']['model'] == 'rednet26'
    rng = ck['rng']
    assert rng['world_size'] == 1 and {'python', 'numpy', 'torch'} <= set(rng['ranks'][0])
    best = load_weights_only(run_dir / 'model_best.pth.tar')
    assert best['metric'] == max(float(r['eval_ema_top1']) for r in summary_rows(run_dir))
    # timm's own loader reads it (EMA weights preferred, as timm does)
    model = timm.create_model('rednet26', stem_chs=16, widths=(32, 32, 64, 64), depths=(1, 1, 1, 1),
                              group_channels=8, num_classes=10)
    timm.models.load_checkpoint(model, str(run_dir / 'last.pth.tar'), use_ema=True)
    assert all(torch.equal(v, ck['state_dict_ema'][k]) for k, v in model.state_dict().items())


def test_best_weights_exported_as_save_for_hf(tiny_run):
    run_dir, _ = tiny_run
    assert sorted(p.name for p in (run_dir / 'best').iterdir()) == ['config.json', 'model.safetensors']
    model = timm.create_model(f'local-dir:{run_dir / "best"}', pretrained=True)
    best = load_weights_only(run_dir / 'model_best.pth.tar')
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in best['state_dict_ema'].items())  # the EMA weights were ranked
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg['input_size'] == (3, 32, 32) and model.num_classes == 10
    from backbones.data import CLASSES
    assert model.pretrained_cfg['label_names'] == CLASSES  # the dataset's class names, in class-index order


def test_epoch_lines_and_progress(tiny_data, tmp_path, caplog, one_thread):
    caplog.set_level(logging.INFO)
    assert main(tiny_argv(tiny_data, tmp_path, 'log', '--log-interval', '2', epochs=1)) == 0
    text = caplog.text
    assert 'epoch 0 (1/1) | train loss' in text and 'top-1' in text and 'img/s' in text
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith('train 0 (1/1) [')]
    assert len(progress) == 3  # steps 2, 4 and the last (5 steps of 8 images)
    assert all('loss' in m and 'lr' in m and 'img/s' in m and 'ETA' in m for m in progress)


# --- resume ---------------------------------------------------------------------------------------------------------
def test_resume_auto_continues_and_is_a_noop_when_complete(tiny_data, tmp_path, one_thread):
    argv = tiny_argv(tiny_data, tmp_path, 'r', '--resume', 'auto', '--checkpoint-hist', '2', epochs=1)
    assert main(argv) == 0  # nothing to resume: starts fresh
    run_dir = tmp_path / 'r'
    assert load_weights_only(run_dir / 'last.pth.tar', 'epoch') == 0
    argv3 = tiny_argv(tiny_data, tmp_path, 'r', '--resume', 'auto', '--checkpoint-hist', '2', epochs=3)
    assert main(argv3) == 0
    assert [int(r['epoch']) for r in summary_rows(run_dir)] == [0, 1, 2]
    assert load_weights_only(run_dir / 'last.pth.tar', 'epoch') == 2
    assert len(list(run_dir.glob('checkpoint-*.pth.tar'))) == 2  # history restored: the limit holds
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    assert main(argv3) == 0  # complete: nothing is written
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


def test_resume_auto_needs_experiment(tiny_data, tmp_path, capsys):
    argv = [a for a in tiny_argv(tiny_data, tmp_path, 'x', '--resume', 'auto') if a not in ('--experiment', 'x')]
    assert main(argv) == 2
    assert '--experiment' in capsys.readouterr().err


def test_fresh_run_replaces_earlier_summary(tiny_data, tmp_path, one_thread):
    assert main(tiny_argv(tiny_data, tmp_path, 'f', epochs=2)) == 0
    assert main(tiny_argv(tiny_data, tmp_path, 'f', epochs=1)) == 0
    assert [int(r['epoch']) for r in summary_rows(tmp_path / 'f')] == [0]


# --- atomic writes --------------------------------------------------------------------------------------------------
def test_atomic_save_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth.tar'
    atomic_save({'epoch': 1}, path)
    good = path.read_bytes()

    def dies_mid_write(obj, f, *a, **k):
        f.write(b'partial garbage')
        raise KeyboardInterrupt('killed during the write')

    monkeypatch.setattr(ckpt_mod.torch, 'save', dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({'epoch': 2}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth.tar']


def test_saver_never_leaves_last_missing(tmp_path, monkeypatch):
    """timm's saver unlinks last.pth.tar before replacing it; ours replaces atomically, so at every moment of a save
    last.pth.tar exists and is complete."""
    saver = ckpt_mod.TrainCheckpointSaver(lambda e, m: {'epoch': e}, str(tmp_path), max_history=2)
    saver.save_checkpoint(0, metric=1.0)
    seen = []
    real_replace = os.replace

    def watching_replace(src, dst):
        seen.append(load_weights_only(tmp_path / 'last.pth.tar', 'epoch'))
        real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, 'replace', watching_replace)
    monkeypatch.setattr(os, 'unlink', lambda *a, **k: pytest.fail('unlink of a checkpoint during a save'))
    saver.save_checkpoint(1, metric=2.0)
    assert seen and set(seen) <= {0, 1}
    assert load_weights_only(tmp_path / 'model_best.pth.tar', 'epoch') == 1


# --- data order -----------------------------------------------------------------------------------------------------
def test_epoch_data_order_is_a_function_of_seed_and_epoch(tiny_data):
    from timm.data import create_dataset, create_loader
    ds = create_dataset('', root=str(tiny_data), split='train')
    loader = create_loader(ds, (3, 32, 32), 4, is_training=True, num_workers=0, device=torch.device('cpu'),
                           use_prefetcher=False, no_aug=True)

    def order(seed, epoch):
        set_loader_epoch(loader, seed, epoch)
        torch.rand(17)  # whatever else consumed the global RNG in between
        return list(iter(loader.sampler))

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)


# --- fine-tuning ----------------------------------------------------------------------------------------------------
def _tiny_args(extra):
    args, _ = parse_args([*TINY_MODEL, '--device', 'cpu', *extra])
    return args


@pytest.mark.parametrize('source', ['save_for_hf', 'training_checkpoint'])
def test_fine_tune_keeps_backbone_and_makes_new_head(tiny_run, tmp_path, caplog, source):
    run_dir, _ = tiny_run
    path = run_dir / 'best' if source == 'save_for_hf' else run_dir / 'last.pth.tar'
    ref = load_weights_only(run_dir / ('model_best.pth.tar' if source == 'save_for_hf' else 'last.pth.tar'))
    ref = ref['state_dict_ema']  # EMA weights: exported, and preferred in a training checkpoint
    caplog.set_level(logging.INFO)
    model, info = create_train_model(_tiny_args(['--pretrained-path', str(path), '--num-classes', '4']))
    assert model.num_classes == 4 and model.head.fc.weight.shape[0] == 4
    sd = model.state_dict()
    for k, v in ref.items():
        if not k.startswith('head.fc.'):
            assert torch.equal(sd[k], v), k
    assert set(info['pretrained']['dropped']) == {'head.fc.weight', 'head.fc.bias'}
    assert 'NEW head head.fc.bias, head.fc.weight for 4 classes' in caplog.text
    assert 'head.fc.weight [10, 64]' in caplog.text and 'head.fc.bias [10]' in caplog.text
    # same class count: the head is loaded too
    model, info = create_train_model(_tiny_args(['--pretrained-path', str(path), '--num-classes', '10']))
    assert not info['pretrained']['dropped']
    assert torch.equal(model.state_dict()['head.fc.weight'], ref['head.fc.weight'])


def test_fine_tune_with_pretrained_from_a_local_dir(tiny_run, caplog):
    run_dir, _ = tiny_run
    caplog.set_level(logging.INFO)
    args, _ = parse_args(['--model', f'local-dir:{run_dir / "best"}', '--pretrained', '--num-classes', '4'])
    model, _ = create_train_model(args)
    ref = load_weights_only(run_dir / 'model_best.pth.tar', 'state_dict_ema')
    assert model.num_classes == 4
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items() if not k.startswith('head.fc.'))
    assert 'NEW head head.fc.weight, head.fc.bias for 4 classes, the pretrained 10-class head was dropped' \
        in caplog.text


def test_progress_bar_on_a_terminal():
    import io

    from backbones.train.progress import Progress
    stream = io.StringIO()
    bar = Progress(5, 'train 0/1', use_bar=True, stream=stream)
    for _ in range(5):
        bar.update(8, loss=1.2345, lr=0.001)
    bar.close()
    text = stream.getvalue()
    assert 'train 0/1' in text and '5/5' in text and 'loss=1.2345' in text and 'lr=0.0010' in text
    assert 'img/s=' in text and '<00:00' in text  # tqdm's elapsed<remaining (the ETA)


def test_fine_tune_from_weights_of_another_model_is_refused(tiny_run):
    run_dir, _ = tiny_run
    args = _tiny_args(['--pretrained-path', str(run_dir / 'best'), '--num-classes', '4'])
    args.model_kwargs = dict(args.model_kwargs, widths=(64, 64, 128, 128))
    with pytest.raises(CheckpointError, match='does not fit rednet26') as e:
        create_train_model(args)
    assert '\n' not in str(e.value)


def test_export_for_hf_replaces_files_atomically(tmp_path):
    m = timm.create_model('rednet26', stem_chs=16, widths=(32, 32, 64, 64), depths=(1, 1, 1, 1), group_channels=8,
                          num_classes=3)
    d = export_for_hf(m, tmp_path / 'best', label_names=['a', 'b', 'c'])
    export_for_hf(m, d)  # again, over the existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best']
    assert sorted(p.name for p in d.iterdir()) == ['config.json', 'model.safetensors']


def test_export_for_hf_of_a_channels_last_model(tmp_path):
    """--channels-last (a quick-start default) trains a model whose conv weights are not contiguous: safetensors
    refuses those, so the export writes a contiguous copy and leaves the trained model as it is."""
    m = timm.create_model('se_resnet50', depths=(1, 1, 1, 1), widths=(16, 32, 64, 128), num_classes=3)
    m.to(memory_format=torch.channels_last)
    weight = m.stem.conv1.conv.weight
    assert not weight.is_contiguous()
    d = export_for_hf(m, tmp_path / 'best')
    assert m.stem.conv1.conv.weight is weight and not weight.is_contiguous()
    loaded = timm.create_model(f'local-dir:{d}', pretrained=True).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in m.state_dict().items())


# --- defaults -------------------------------------------------------------------------------------------------------
def test_explicit_keys_from_command_line_and_config(tmp_path):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('epochs: 3\nlr: 0.1\n')
    assert explicit_keys(['--model', 'x', '-b', '4', '--no-aug']) == {'model', 'batch_size', 'no_aug'}
    assert explicit_keys(['-c', str(cfg), '--seed', '1']) == {'epochs', 'lr', 'seed'}
    assert 'data_dir' in explicit_keys(['some/dir'])


def test_embedded_defaults_apply_only_without_data_and_to_unset_flags():
    args, _ = parse_args([])
    changed = apply_run_defaults(args, set(), log=False)
    for key, value in EMBEDDED_DEFAULTS.items():
        assert getattr(args, key) == value, key
    assert set(EMBEDDED_DEFAULTS) <= set(changed)
    assert backbones.get_variant_info(args.model)  # a zoo model

    argv = ['--model', 'rednet26', '--epochs', '2']
    args, _ = parse_args(argv)
    apply_run_defaults(args, explicit_keys(argv), log=False)
    assert (args.model, args.epochs, args.batch_size) == ('rednet26', 2, EMBEDDED_DEFAULTS['batch_size'])
    assert args.model_kwargs == {} and not args.channels_last  # the default model's settings go with it only
    assert args.img_size == EMBEDDED_DEFAULTS['img_size']

    argv = ['--data-dir', '/data/imagenet']
    args, _ = parse_args(argv)
    apply_run_defaults(args, explicit_keys(argv), log=False)
    assert (args.model, args.epochs, args.batch_size) == ('resnet50', 300, 128)  # timm's, untouched
    if not torch.cuda.is_available():
        assert args.device == 'cpu'


def test_quick_start_defaults_build_and_round_trip(tmp_path):
    """The no-argument run (a smoke test, no training): its model builds at its input size with the dataset's 10
    classes, its schedule warms up and decays per step, and its args.yaml reruns it unchanged."""
    from backbones.train.model import check_model_input
    args, _ = parse_args([])
    apply_run_defaults(args, set(), log=False)
    check_model_input(args)  # meta device: builds the model and runs one forward at --img-size
    model = timm.create_model(args.model, num_classes=10, device='meta', **args.model_kwargs)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # small: a laptop CPU trains it in minutes
    assert args.epochs > args.warmup_epochs >= 1 and args.sched == 'cosine' and args.sched_on_updates
    assert args.data_dir is None and not args.dataset  # the embedded dataset
    path = tmp_path / 'args.yaml'
    path.write_text(args_to_yaml(args))
    again, _ = parse_args(['-c', str(path)])
    assert vars(again) == vars(args)
    shown = ' '.join(build_parser().format_help().split())  # --help lists the quick-start values
    assert f"--model {args.model} --model-kwargs 'depths=" in shown and f'--epochs {args.epochs} ' in shown


def test_cpu_threads_leave_a_core_per_data_worker(monkeypatch):
    from backbones.train import defaults
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setattr(defaults, 'available_cpus', lambda: 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert defaults.configure_cpu_threads(workers=1, log=False) == 1 == torch.get_num_threads()
        torch.set_num_threads(2)
        assert defaults.configure_cpu_threads(workers=0, log=False) == 2
    finally:
        torch.set_num_threads(before)


def test_loss_selection_follows_timm():
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    from backbones.train.loop import _losses
    cpu = torch.device('cpu')
    assert isinstance(_losses(_tiny_args([]), False, 0, cpu), LabelSmoothingCrossEntropy)
    assert isinstance(_losses(_tiny_args(['--mixup', '0.2']), True, 0, cpu), SoftTargetCrossEntropy)
    assert isinstance(_losses(_tiny_args(['--bce-loss']), True, 0, cpu), BinaryCrossEntropy)
    assert isinstance(_losses(_tiny_args(['--smoothing', '0']), False, 0, cpu), torch.nn.CrossEntropyLoss)


def test_embedded_dataset_is_the_default_source(tmp_path, monkeypatch):
    from backbones.train.data import EMBEDDED_DATASET, resolve_data_root
    monkeypatch.setenv('BACKBONES_DATA_CACHE', str(tmp_path))
    calls = []
    monkeypatch.setattr('backbones.data.make_shapes_dataset', lambda **kw: calls.append(kw) or Path('/x'))
    assert resolve_data_root(None, '') == ('/x', True)
    assert calls == [EMBEDDED_DATASET]
    assert resolve_data_root('/data', '') == ('/data', False)


def test_resume_repairs_a_stale_best_export(tiny_run, tmp_path):
    """A kill between writing model_best.pth.tar and exporting it leaves best/ one best behind: a resume re-exports."""
    import json
    import shutil

    from backbones.train.loop import BEST_DIR, _repair_best_export
    run_dir = tmp_path / 'run'
    shutil.copytree(tiny_run[0], run_dir)
    best = load_weights_only(run_dir / 'model_best.pth.tar')
    cfg_path = run_dir / BEST_DIR / 'config.json'
    cfg = json.loads(cfg_path.read_text())
    cfg['training']['epoch'] = best['epoch'] - 1  # as if the export of the latest best never happened
    cfg_path.write_text(json.dumps(cfg))
    (run_dir / BEST_DIR / 'model.safetensors').unlink()
    args, _ = parse_args(['-c', str(run_dir / 'args.yaml')])
    model = timm.create_model('rednet26', num_classes=10, **args.model_kwargs)
    _repair_best_export(run_dir, best['epoch'], model, best['data_config'], best['class_names'], args)
    assert json.loads(cfg_path.read_text())['training']['epoch'] == best['epoch']
    exported = timm.create_model(f'local-dir:{run_dir / BEST_DIR}', pretrained=True).state_dict()
    assert all(torch.equal(exported[k], v) for k, v in best['state_dict_ema'].items())
    assert sorted(p.name for p in (run_dir / BEST_DIR).iterdir()) == ['config.json', 'model.safetensors']
