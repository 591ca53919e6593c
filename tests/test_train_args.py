"""The training argument parser (timm train.py flags, -c YAML configs) and every shipped configs/ recipe."""
import argparse
import glob
import os

import pytest
import yaml

import backbones
from backbones.train import ConfigError, build_parser, parse_args, resolve_lr
from backbones.train.args import UNSUPPORTED_TIMM_KEYS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*', '*.yaml')))


def _write(tmp_path, cfg, name='cfg.yaml'):
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return str(path)


# --- shipped configs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('path', CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_config_loads(path):
    args, text = parse_args(['-c', path])
    stem = os.path.splitext(os.path.basename(path))[0]
    assert args.model == stem
    assert args.model in backbones.list_models()
    assert os.path.basename(os.path.dirname(path)) == backbones.get_variant_info(stem).family
    assert args.epochs > 0 and args.batch_size > 0 and resolve_lr(args) > 0
    raw = open(path).read()
    for line in raw.splitlines():  # every value line names its source
        if line and not line.startswith('#'):
            assert '  # ' in line, f'{path}: no source comment on {line!r}'


def test_every_zoo_variant_has_a_config():
    have = {os.path.splitext(os.path.basename(p))[0] for p in CONFIGS}
    assert set(backbones.list_models()) <= have


# --- YAML handling --------------------------------------------------------------------------------------------------
def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, {'model': 'rednet26', 'wieght_decay': 1e-4})
    with pytest.raises(ConfigError, match=r"wieght_decay.*weight_decay"):
        parse_args(['-c', path])


def test_dashed_key_suggests_dest_name(tmp_path):
    path = _write(tmp_path, {'batch-size': 4})
    with pytest.raises(ConfigError, match=r"'batch-size'.*batch_size"):
        parse_args(['-c', path])


def test_unknown_model_is_named(tmp_path):
    path = _write(tmp_path, {'model': 'rednet27'})
    with pytest.raises(ConfigError, match=r"rednet27.*rednet26"):
        parse_args(['-c', path])
    # a valid CLI --model overriding it is fine
    args, _ = parse_args(['-c', path, '--model', 'rednet26'])
    assert args.model == 'rednet26'


def test_bad_value_is_named_and_numeric_strings_convert(tmp_path):
    with pytest.raises(ConfigError, match='epochs'):
        parse_args(['-c', _write(tmp_path, {'epochs': 'many'})])
    with pytest.raises(ConfigError, match='input_size'):
        parse_args(['-c', _write(tmp_path, {'input_size': [3, 224]})])
    with pytest.raises(ConfigError, match='model_ema'):
        parse_args(['-c', _write(tmp_path, {'model_ema': 'yes please'})])
    args, _ = parse_args(['-c', _write(tmp_path, 'lr: 1e-3\nopt_betas: [0.9, 0.999]\nmin_lr: 0\n')])
    assert args.lr == 0.001 and isinstance(args.lr, float)  # PyYAML reads 1e-3 as a string
    assert args.opt_betas == [0.9, 0.999]


def test_cli_overrides_yaml(tmp_path):
    path = _write(tmp_path, {'model': 'rednet26', 'epochs': 7, 'lr': 0.3, 'mixup': 0.2, 'model_ema': True})
    args, _ = parse_args(['-c', path, '--epochs', '3', '--mixup', '0.5'])
    assert (args.epochs, args.mixup) == (3, 0.5)
    assert (args.lr, args.model_ema, args.model) == (0.3, True, 'rednet26')  # kept from YAML


def test_args_text_round_trips(tmp_path):
    argv = ['--model', 'rednet26', '-b', '16', '--lr', '0.01', '--opt', 'adamw', '--opt-betas', '0.9', '0.99',
            '--input-size', '3', '64', '64', '--mean', '0.5', '0.5', '0.5', '--model-ema', '--amp', '--amp-dtype',
            'bfloat16', '--torchcompile', '--model-kwargs', 'drop_rate=0.1', '--cutmix-minmax', '0.2', '0.8',
            '--data-dir', '/tmp/x', '-j', '0', '--device', 'cpu', '--decay-milestones', '10', '20']
    args, text = parse_args(argv)
    assert args.torchcompile == 'inductor' and args.model_kwargs == {'drop_rate': 0.1}
    args2, text2 = parse_args(['-c', _write(tmp_path, text, 'args.yaml')])
    assert vars(args2) == vars(args)
    assert text2 == text
    for path in CONFIGS[:3]:
        a, t = parse_args(['-c', path])
        b, _ = parse_args(['-c', _write(tmp_path, t, 'again.yaml')])
        assert vars(a) == vars(b)


def test_timm_style_args_yaml_with_every_supported_key(tmp_path):
    defaults = vars(build_parser().parse_args([]))
    del defaults['config']
    cfg = dict(defaults, **UNSUPPORTED_TIMM_KEYS)  # timm writes every key, also those of features we lack
    cfg.update(model='rednet26', data_dir='/data/imagenet', batch_size=64, opt='lamb', lr_base=5e-3, epochs=600,
               aa='rand-m7-mstd0.5-inc1', mixup=0.1, cutmix=1.0, bce_loss=True, drop_path=0.05, model_ema=True)
    args, _ = parse_args(['-c', _write(tmp_path, cfg)])
    for key, value in cfg.items():
        if key not in UNSUPPORTED_TIMM_KEYS:
            assert getattr(args, key) == value, key
    assert not set(UNSUPPORTED_TIMM_KEYS) & set(vars(args))
    with pytest.raises(ConfigError, match='kd_model_name'):
        parse_args(['-c', _write(tmp_path, dict(cfg, kd_model_name='resnet50'))])


# --- timm's flags and defaults --------------------------------------------------------------------------------------
TIMM_DEFAULTS = dict(
    data=None, data_dir=None, dataset='', train_split='train', val_split='validation', model='resnet50',
    pretrained=False, pretrained_path=None, initial_checkpoint='', resume='', num_classes=None, img_size=None,
    input_size=None, crop_pct=None, mean=None, std=None, interpolation='', batch_size=128, validation_batch_size=None,
    channels_last=False, grad_accum_steps=1, torchscript=False, torchcompile=None, device='cuda', amp=False,
    amp_dtype='float16', opt='sgd', opt_eps=None, opt_betas=None, momentum=0.9, weight_decay=2e-5, clip_grad=None,
    clip_mode='norm', layer_decay=None, sched='cosine', lr=None, lr_base=0.1, lr_base_size=256, lr_base_scale='',
    warmup_lr=1e-5, min_lr=0, epochs=300, decay_epochs=90, warmup_epochs=5, cooldown_epochs=0, decay_rate=0.1,
    decay_milestones=[90, 180, 270], scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], hflip=0.5, vflip=0.0, color_jitter=0.4,
    aa=None, reprob=0.0, remode='pixel', recount=1, mixup=0.0, cutmix=0.0, cutmix_minmax=None, mixup_prob=1.0,
    mixup_switch_prob=0.5, mixup_mode='batch', mixup_off_epoch=0, smoothing=0.1, train_interpolation='random',
    drop=0.0, drop_path=None, bce_loss=False, jsd_loss=False, sync_bn=False, dist_bn='reduce', model_ema=False,
    model_ema_decay=0.9998, seed=42, log_interval=50, checkpoint_hist=10, workers=4, pin_mem=False,
    no_prefetcher=False, output='', experiment='', eval_metric='top1',
)


def test_timm_defaults():
    args, _ = parse_args([])
    for key, value in TIMM_DEFAULTS.items():
        assert getattr(args, key) == value, key
    assert 'config' not in vars(args)


def test_short_flags_and_aliases():
    args, _ = parse_args(['-b', '8', '-vb', '16', '-j', '2', '--dr', '0.5', 'some/dir'])
    assert (args.batch_size, args.validation_batch_size, args.workers, args.decay_rate) == (8, 16, 2, 0.5)
    assert args.data_dir == 'some/dir'  # deprecated positional, as in timm
    assert parse_args(['--torchcompile', 'eager'])[0].torchcompile == 'eager'
    with pytest.raises(SystemExit):
        parse_args(['--torchscript', '--torchcompile'])


def test_lr_base_semantics():
    def lr(argv, world_size=1):
        return resolve_lr(parse_args(argv)[0], world_size)
    assert lr([]) == pytest.approx(0.1 * 128 / 256)  # sgd: linear
    assert lr(['--lr', '0.3']) == 0.3  # --lr wins
    assert lr(['-b', '64', '--grad-accum-steps', '2'], world_size=4) == pytest.approx(0.1 * 512 / 256)
    assert lr(['--opt', 'adamw', '-b', '1024']) == pytest.approx(0.1 * 2.0)  # ada*: sqrt
    assert lr(['--opt', 'lamb', '-b', '64']) == pytest.approx(0.1 * 0.5)
    assert lr(['--opt', 'adamw', '-b', '1024', '--lr-base-scale', 'linear']) == pytest.approx(0.4)
    assert lr(['--lr-base', '0.8', '--lr-base-size', '2048', '-b', '256'], world_size=8) == pytest.approx(0.8)


def test_build_parser_is_argparse():
    parser = build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser.parse_args(['--model', 'x']).model == 'x'
