"""Command-line / YAML arguments of ``tools/train.py``, with timm ``train.py``'s flag names, defaults and semantics.

A published timm recipe or a timm ``args.yaml`` loads unchanged through ``-c/--config``: its keys (the argparse
``dest`` names) become the parser's defaults and flags given on the command line override them, exactly as in timm.
Two things are stricter than timm:

* an unknown YAML key is an error that names the key and suggests the closest known ones;
* a config whose ``model`` is neither a timm model nor a zoo model (after ``import backbones``) is an error.

YAML values pass through each flag's own ``type`` (PyYAML reads ``1e-3`` as a *string*; it becomes ``0.001``) and
``choices``, so a bad value is reported against its key instead of failing deep inside training.

A few timm ``train.py`` features are not implemented by this trainer (NaFlex loaders, distillation, variable-size
training, wandb, ...). Their keys are accepted in a YAML file when they hold timm's default value (timm writes every
key into ``args.yaml``), and rejected, naming the key, when a file asks for the feature.
"""
import argparse
import difflib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from timm.utils import ParseKwargs

from .. import _cli
from .._registry import list_models
from .quickstart import EMBEDDED_DEFAULTS

__all__ = [
    'build_parser', 'parse_args', 'resolve_lr', 'load_config', 'args_to_yaml', 'check_values', 'ConfigError',
    'UNSUPPORTED_TIMM_KEYS',
]


class ConfigError(ValueError):
    """A ``-c/--config`` file that cannot be used: unknown key, bad value or unknown model."""


# ---------------------------------------------------------------------------------------------------------------------
# Flag tables: (flags, argparse kwargs), grouped as in timm's train.py. Defaults are timm 1.0.x train.py's.
_STORE_TRUE = dict(action='store_true', default=False)

_DATASET = [
    (('data',), dict(nargs='?', metavar='DIR', const=None,
                     help='path to dataset (positional is deprecated, use --data-dir)')),
    (('--data-dir',), dict(metavar='DIR', help='path to dataset (root dir); none: the embedded default dataset')),
    (('--dataset',), dict(metavar='NAME', default='',
                          help='dataset type + name ("<type>/<name>"); "" = ImageFolder/ImageTar')),
    (('--train-split',), dict(metavar='NAME', default='train', help='dataset train split (default: train)')),
    (('--val-split',), dict(metavar='NAME', default='validation',
                            help='dataset validation split (default: validation)')),
    (('--train-num-samples',), dict(type=int, metavar='N', default=None,
                                    help='manually specify num samples in train split')),
    (('--val-num-samples',), dict(type=int, metavar='N', default=None,
                                  help='manually specify num samples in val split')),
    (('--dataset-download',), dict(_STORE_TRUE, help='allow download of dataset for torch/ and tfds/ datasets')),
    (('--class-map',), dict(default='', type=str, metavar='FILENAME', help='path to class to idx mapping file')),
    (('--input-img-mode',), dict(default=None, type=str, help='dataset image conversion mode for input images')),
    (('--input-key',), dict(default=None, type=str, help='dataset key for input images')),
    (('--target-key',), dict(default=None, type=str, help='dataset key for target labels')),
    (('--dataset-trust-remote-code',), dict(_STORE_TRUE, help='allow huggingface dataset import to execute code')),
]

_MODEL = [
    (('--model',), dict(default='resnet50', type=str, metavar='MODEL', help='name of model to train (zoo or timm)')),
    (('--pretrained',), dict(_STORE_TRUE, help='start with pretrained version of specified network (if avail)')),
    (('--pretrained-path',), dict(default=None, type=str,
                                  help='load this checkpoint as if it were the pretrained weights (with adaptation)')),
    (('--initial-checkpoint',), dict(default='', type=str, metavar='PATH',
                                     help='load this checkpoint into model after initialization (strict)')),
    (('--resume',), dict(default='', type=str, metavar='PATH', help='resume full model and optimizer state ("auto")')),
    (('--no-resume-opt',), dict(_STORE_TRUE, help='prevent resume of optimizer state when resuming model')),
    (('--num-classes',), dict(type=int, default=None, metavar='N', help='number of label classes (model default)')),
    (('--gp',), dict(default=None, type=str, metavar='POOL', help='global pool type (model default if None)')),
    (('--img-size',), dict(type=int, default=None, metavar='N', help='image size (default: None => model default)')),
    (('--in-chans',), dict(type=int, default=None, metavar='N', help='image input channels (default: None => 3)')),
    (('--input-size',), dict(default=None, nargs=3, type=int, metavar='N',
                             help='input all image dimensions (d h w, e.g. --input-size 3 224 224)')),
    (('--crop-pct',), dict(default=None, type=float, metavar='N', help='input image center crop percent (eval only)')),
    (('--mean',), dict(type=float, nargs='+', default=None, metavar='MEAN', help='override mean pixel value')),
    (('--std',), dict(type=float, nargs='+', default=None, metavar='STD', help='override std deviation of dataset')),
    (('--interpolation',), dict(default='', type=str, metavar='NAME', help='image resize interpolation type')),
    (('-b', '--batch-size'), dict(type=int, default=128, metavar='N',
                                  help='input batch size for training (default: 128)')),
    (('-vb', '--validation-batch-size'), dict(type=int, default=None, metavar='N',
                                              help='validation batch size override (default: None)')),
    (('--channels-last',), dict(_STORE_TRUE, help='use channels_last memory layout')),
    (('--fuser',), dict(default='', type=str, help='select jit fuser')),
    (('--grad-accum-steps',), dict(type=int, default=1, metavar='N',
                                   help='the number of steps to accumulate gradients')),
    (('--grad-checkpointing',), dict(_STORE_TRUE, help='enable gradient checkpointing through model blocks/stages')),
    (('--fast-norm',), dict(_STORE_TRUE, help='enable experimental fast-norm')),
    (('--model-kwargs',), dict(nargs='*', default={}, action=ParseKwargs, help='extra model kwargs k=v ...')),
    (('--head-init-scale',), dict(default=None, type=float, help='head initialization scale')),
    (('--head-init-bias',), dict(default=None, type=float, help='head initialization bias value')),
    (('--torchcompile-mode',), dict(type=str, default=None, help='torch.compile mode (default: None)')),
]

# mutually exclusive, as in timm
_SCRIPTING = [
    (('--torchscript',), dict(dest='torchscript', action='store_true', default=False,
                              help='torch.jit.script the model')),
    (('--torchcompile',), dict(nargs='?', type=str, default=None, const='inductor',
                               help='enable compilation w/ specified backend (default: inductor)')),
]

_DEVICE = [
    (('--device',), dict(default='cuda', type=str, help='device to use for training; default: cuda')),
    (('--amp',), dict(_STORE_TRUE, help='use native torch AMP for mixed precision training')),
    (('--amp-dtype',), dict(default='float16', type=str, help='lower precision AMP dtype (float16 or bfloat16)')),
    (('--amp-impl',), dict(default='native', type=str, help='AMP impl to use, "native" only')),
    (('--model-dtype',), dict(default=None, type=str, help='model dtype override (non-AMP) (default: float32)')),
    (('--no-ddp-bb',), dict(_STORE_TRUE, help='force broadcast buffers for native DDP to off')),
    (('--synchronize-step',), dict(_STORE_TRUE, help='torch.cuda.synchronize() end of each step')),
    (('--local_rank',), dict(default=0, type=int)),
    (('--device-modules',), dict(default=None, type=str, nargs='+',
                                 help='python imports for device backend modules')),
]

_OPTIMIZER = [
    (('--opt',), dict(default='sgd', type=str, metavar='OPTIMIZER', help='optimizer (default: "sgd")')),
    (('--opt-eps',), dict(default=None, type=float, metavar='EPSILON', help='optimizer epsilon (optimizer default)')),
    (('--opt-betas',), dict(default=None, type=float, nargs='+', metavar='BETA', help='optimizer betas')),
    (('--momentum',), dict(type=float, default=0.9, metavar='M', help='optimizer momentum (default: 0.9)')),
    (('--weight-decay',), dict(type=float, default=2e-5, help='weight decay (default: 2e-5)')),
    (('--clip-grad',), dict(type=float, default=None, metavar='NORM', help='clip gradient norm (default: None)')),
    (('--clip-mode',), dict(type=str, default='norm', help='gradient clipping mode: "norm", "value", "agc"')),
    (('--layer-decay',), dict(type=float, default=None, help='layer-wise learning rate decay (default: None)')),
    (('--layer-decay-min-scale',), dict(type=float, default=0.0, help='layer-wise lr decay minimum scale')),
    (('--layer-decay-no-opt-scale',), dict(type=float, default=None,
                                           help='layer-wise lr decay scale below which layers are not optimized')),
    (('--opt-kwargs',), dict(nargs='*', default={}, action=ParseKwargs, help='extra optimizer kwargs k=v ...')),
]

_SCHEDULE = [
    (('--sched',), dict(type=str, default='cosine', metavar='SCHEDULER', help='LR scheduler (default: "cosine")')),
    (('--sched-on-updates',), dict(_STORE_TRUE, help='apply LR scheduler step on update instead of epoch end')),
    (('--lr',), dict(type=float, default=None, metavar='LR',
                     help='learning rate, overrides lr-base if set (default: None)')),
    (('--lr-base',), dict(type=float, default=0.1, metavar='LR',
                          help='base learning rate: lr = lr_base * global_batch_size / lr_base_size')),
    (('--lr-base-size',), dict(type=int, default=256, metavar='DIV', help='base learning rate batch size (divisor)')),
    (('--lr-base-scale',), dict(type=str, default='', metavar='SCALE',
                                help='base learning rate vs batch_size scaling ("linear", "sqrt", "" = by optimizer)')),
    (('--lr-noise',), dict(type=float, nargs='+', default=None, metavar='pct, pct',
                           help='learning rate noise on/off epoch percentages')),
    (('--lr-noise-pct',), dict(type=float, default=0.67, metavar='PERCENT', help='learning rate noise limit percent')),
    (('--lr-noise-std',), dict(type=float, default=1.0, metavar='STDDEV', help='learning rate noise std-dev')),
    (('--lr-cycle-mul',), dict(type=float, default=1.0, metavar='MULT', help='learning rate cycle len multiplier')),
    (('--lr-cycle-decay',), dict(type=float, default=0.5, metavar='MULT', help='amount to decay each lr cycle')),
    (('--lr-cycle-limit',), dict(type=int, default=1, metavar='N',
                                 help='learning rate cycle limit, cycles enabled if > 1')),
    (('--lr-k-decay',), dict(type=float, default=1.0, help='learning rate k-decay for cosine/poly')),
    (('--warmup-lr',), dict(type=float, default=1e-5, metavar='LR', help='warmup learning rate (default: 1e-5)')),
    (('--min-lr',), dict(type=float, default=0, metavar='LR',
                         help='lower lr bound for cyclic schedulers (default: 0)')),
    (('--epochs',), dict(type=int, default=300, metavar='N', help='number of epochs to train (default: 300)')),
    (('--epoch-repeats',), dict(type=float, default=0.0, metavar='N', help='epoch repeat multiplier')),
    (('--start-epoch',), dict(default=None, type=int, metavar='N', help='manual epoch number (useful on restarts)')),
    (('--decay-milestones',), dict(default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
                                   help='list of decay epoch indices for multistep lr')),
    (('--decay-epochs',), dict(type=float, default=90, metavar='N', help='epoch interval to decay LR')),
    (('--warmup-epochs',), dict(type=int, default=5, metavar='N', help='epochs to warmup LR, if scheduler supports')),
    (('--warmup-prefix',), dict(_STORE_TRUE, help='exclude warmup period from decay schedule')),
    (('--cooldown-epochs',), dict(type=int, default=0, metavar='N', help='epochs to cooldown LR at min_lr')),
    (('--patience-epochs',), dict(type=int, default=10, metavar='N', help='patience epochs for Plateau LR scheduler')),
    (('--decay-rate', '--dr'), dict(type=float, default=0.1, metavar='RATE', help='LR decay rate (default: 0.1)')),
]

_AUGMENT = [
    (('--no-aug',), dict(_STORE_TRUE, help='disable all training augmentation, override other train aug args')),
    (('--train-crop-mode',), dict(type=str, default=None, help='crop-mode in train')),
    (('--scale',), dict(type=float, nargs='+', default=[0.08, 1.0], metavar='PCT',
                        help='random resize scale (default: 0.08 1.0)')),
    (('--ratio',), dict(type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO',
                        help='random resize aspect ratio (default: 0.75 1.33)')),
    (('--hflip',), dict(type=float, default=0.5, help='horizontal flip training aug probability')),
    (('--vflip',), dict(type=float, default=0.0, help='vertical flip training aug probability')),
    (('--color-jitter',), dict(type=float, default=0.4, metavar='PCT', help='color jitter factor (default: 0.4)')),
    (('--color-jitter-prob',), dict(type=float, default=None, metavar='PCT',
                                    help='probability of applying color jitter')),
    (('--grayscale-prob',), dict(type=float, default=None, metavar='PCT', help='probability of applying grayscale')),
    (('--gaussian-blur-prob',), dict(type=float, default=None, metavar='PCT', help='probability of gaussian blur')),
    (('--aa',), dict(type=str, default=None, metavar='NAME',
                     help='AutoAugment policy, "v0", "original", "rand-m9-mstd0.5", ... (default: None)')),
    (('--aug-repeats',), dict(type=float, default=0, help='number of augmentation repetitions (distributed only)')),
    (('--aug-splits',), dict(type=int, default=0, help='number of augmentation splits (valid: 0 or >= 2)')),
    (('--jsd-loss',), dict(_STORE_TRUE, help='enable Jensen-Shannon Divergence + CE loss (use with --aug-splits)')),
    (('--bce-loss',), dict(_STORE_TRUE, help='enable BCE loss w/ mixup/cutmix use')),
    (('--bce-sum',), dict(_STORE_TRUE, help='sum over classes when using BCE loss')),
    (('--bce-target-thresh',), dict(type=float, default=None, help='threshold for binarizing softened BCE targets')),
    (('--bce-pos-weight',), dict(type=float, default=None, help='positive weighting for BCE loss')),
    (('--reprob',), dict(type=float, default=0.0, metavar='PCT', help='random erase prob (default: 0.)')),
    (('--remode',), dict(type=str, default='pixel', help='random erase mode (default: "pixel")')),
    (('--recount',), dict(type=int, default=1, help='random erase count (default: 1)')),
    (('--resplit',), dict(_STORE_TRUE, help='do not random erase first (clean) augmentation split')),
    (('--mixup',), dict(type=float, default=0.0, help='mixup alpha, mixup enabled if > 0. (default: 0.)')),
    (('--cutmix',), dict(type=float, default=0.0, help='cutmix alpha, cutmix enabled if > 0. (default: 0.)')),
    (('--cutmix-minmax',), dict(type=float, nargs='+', default=None,
                                help='cutmix min/max ratio, overrides alpha and enables cutmix if set')),
    (('--mixup-prob',), dict(type=float, default=1.0, help='probability of performing mixup or cutmix')),
    (('--mixup-switch-prob',), dict(type=float, default=0.5,
                                    help='probability of switching to cutmix when both mixup and cutmix enabled')),
    (('--mixup-mode',), dict(type=str, default='batch', help='how to apply mixup/cutmix: "batch", "pair", or "elem"')),
    (('--mixup-off-epoch',), dict(default=0, type=int, metavar='N',
                                  help='turn off mixup after this epoch (0 = never)')),
    (('--smoothing',), dict(type=float, default=0.1, help='label smoothing (default: 0.1)')),
    (('--train-interpolation',), dict(type=str, default='random', help='training interpolation (default: "random")')),
    (('--drop',), dict(type=float, default=0.0, metavar='PCT', help='dropout rate (default: 0.)')),
    (('--drop-connect',), dict(type=float, default=None, metavar='PCT',
                               help='drop connect rate, DEPRECATED: --drop-path')),
    (('--drop-path',), dict(type=float, default=None, metavar='PCT', help='drop path rate (default: None)')),
    (('--drop-block',), dict(type=float, default=None, metavar='PCT', help='drop block rate (default: None)')),
]

_BATCHNORM = [
    (('--bn-momentum',), dict(type=float, default=None, help='BatchNorm momentum override (if not None)')),
    (('--bn-eps',), dict(type=float, default=None, help='BatchNorm epsilon override (if not None)')),
    (('--sync-bn',), dict(_STORE_TRUE, help='enable NVIDIA Apex or Torch synchronized BatchNorm')),
    (('--dist-bn',), dict(type=str, default='reduce',
                          help='distribute BN stats between nodes after each epoch ("broadcast", "reduce", "")')),
    (('--split-bn',), dict(_STORE_TRUE, help='enable separate BN layers per augmentation split')),
]

_EMA = [
    (('--model-ema',), dict(_STORE_TRUE, help='enable tracking moving average of model weights')),
    (('--model-ema-force-cpu',), dict(_STORE_TRUE, help='force ema to be tracked on CPU, rank=0 node only')),
    (('--model-ema-decay',), dict(type=float, default=0.9998, help='decay factor for model weights moving average')),
    (('--model-ema-warmup',), dict(_STORE_TRUE, help='enable warmup for model EMA decay')),
]

_MISC = [
    (('--seed',), dict(type=int, default=42, metavar='S', help='random seed (default: 42)')),
    (('--worker-seeding',), dict(type=str, default='all', help='worker seed mode (default: all)')),
    (('--log-interval',), dict(type=int, default=50, metavar='N',
                               help='how many batches to wait before logging status')),
    (('--val-interval',), dict(type=int, default=1, metavar='N', help='validate every N epochs')),
    (('--recovery-interval',), dict(type=int, default=0, metavar='N', help='batches between recovery checkpoints')),
    (('--checkpoint-hist',), dict(type=int, default=10, metavar='N',
                                  help='number of checkpoints to keep (default: 10)')),
    (('-j', '--workers'), dict(type=int, default=4, metavar='N',
                               help='how many training processes to use (default: 4)')),
    (('--save-images',), dict(_STORE_TRUE, help='save images of input batches every log interval for debugging')),
    (('--pin-mem',), dict(_STORE_TRUE, help='pin CPU memory in DataLoader for more efficient transfer to GPU')),
    (('--no-prefetcher',), dict(_STORE_TRUE, help='disable fast prefetcher')),
    (('--output',), dict(default='', type=str, metavar='PATH',
                         help='path to output folder (default: none, current dir)')),
    (('--experiment',), dict(default='', type=str, metavar='NAME',
                             help='name of train experiment, name of sub-folder')),
    (('--eval-metric',), dict(default='top1', type=str, metavar='EVAL_METRIC', help='best metric (default: "top1")')),
    (('--tta',), dict(type=int, default=0, metavar='N', help='test/inference time augmentation factor')),
    (('--use-multi-epochs-loader',), dict(_STORE_TRUE, help='use the multi-epochs-loader to save time per epoch')),
]

_GROUPS: List[Tuple[str, list]] = [
    ('Dataset parameters', _DATASET),
    ('Model parameters', _MODEL),
    ('Device parameters', _DEVICE),
    ('Optimizer parameters', _OPTIMIZER),
    ('Learning rate schedule parameters', _SCHEDULE),
    ('Augmentation and regularization parameters', _AUGMENT),
    ('Batch norm parameters', _BATCHNORM),
    ('Model exponential moving average parameters', _EMA),
    ('Miscellaneous parameters', _MISC),
]

# timm train.py keys this trainer does not implement, with timm's default. In a YAML file they are accepted at that
# value (timm writes every key into args.yaml) and rejected otherwise.
UNSUPPORTED_TIMM_KEYS: Dict[str, Any] = {
    'log_wandb': False, 'wandb_project': None, 'wandb_tags': [], 'wandb_resume_id': '',
    'kd_model_name': None, 'kd_model_kwargs': {}, 'kd_distill_type': 'logit', 'kd_loss_type': 'kl',
    'distill_loss_weight': None, 'task_loss_weight': 1.0, 'kd_temperature': 1.0,
    'kd_student_feature_dim': None, 'kd_teacher_feature_dim': None, 'kd_token_distill_type': 'soft',
    'naflex_loader': False, 'naflex_train_seq_lens': [128, 256, 576, 784, 1024], 'naflex_max_seq_len': 576,
    'naflex_patch_sizes': None, 'naflex_patch_size_probs': None, 'naflex_loss_scale': 'linear',
    'train_img_sizes': None, 'train_batch_sizes': None, 'train_size_probs': None,
    'train_size_schedule': 'constant', 'train_size_schedule_spread': None, 'train_size_random_mix': False,
    'train_batches_per_epoch': None, 'variable_batch_loss_scale': None,
}


def _float_default(kwargs: dict) -> dict:
    # timm writes e.g. ``min_lr: 0``; a float flag's default is made a float so args.yaml text round-trips exactly
    if kwargs.get('type') is float and isinstance(kwargs.get('default'), int):
        kwargs = dict(kwargs, default=float(kwargs['default']))
    return kwargs


def _quick_start_epilog() -> str:
    """The quick-start values (``defaults.EMBEDDED_DEFAULTS``) as the flags that would set them."""
    import textwrap

    def flag(key: str, value: Any) -> str:
        name = '--' + key.replace('_', '-')
        if value is True:
            return name
        if isinstance(value, dict):  # --model-kwargs k=v ... (ParseKwargs reads tuples)
            value = ' '.join(f"'{k}=({','.join(map(str, v))})'" if isinstance(v, (list, tuple)) else f'{k}={v}'
                             for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            value = ' '.join(map(str, value))
        return f'{name} {value}'

    text = ('Quick start: with no --data-dir (and no --dataset) the run trains on the embedded shapes dataset, and '
            'every flag not given (on the command line or in -c) takes its quick-start value instead of the default '
            'listed above (--model-kwargs and --channels-last only with the default model): '
            + ' '.join(flag(k, v) for k, v in EMBEDDED_DEFAULTS.items()))
    return textwrap.fill(text, width=118, break_on_hyphens=False, break_long_words=False)


def build_parser() -> argparse.ArgumentParser:
    """The training parser: timm ``train.py``'s flags (names, defaults, types), grouped as timm groups them.

    ``-c/--config`` is handled by :func:`parse_args` (it is not part of the returned namespace, as in timm).
    """
    parser = _cli.ArgumentParser(
        description='Backbone Zoo ImageNet-style training (timm train.py flags; -c/--config YAML sets defaults)',
        epilog=_quick_start_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help='YAML config (keys = argparse dest names, e.g. a timm args.yaml); CLI flags override it')
    for title, table in _GROUPS:
        group = parser.add_argument_group(title)
        for flags, kwargs in table:
            group.add_argument(*flags, **_float_default(kwargs))
        if title == 'Model parameters':
            scripting = group.add_mutually_exclusive_group()
            for flags, kwargs in _SCRIPTING:
                scripting.add_argument(*flags, **kwargs)
    return parser


def _actions(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}


def _coerce(key: str, value: Any, action: argparse.Action, source: str) -> Any:
    """Pass a YAML value through the flag's ``type``/``choices`` (lists element-wise); ``None`` stays ``None``."""
    if value is None:
        return None
    conv = action.type
    try:
        if isinstance(action, ParseKwargs):
            if not isinstance(value, dict):
                raise TypeError('expected a mapping')
            return value
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise TypeError('expected true or false')
        elif action.nargs in ('+', '*') or isinstance(action.nargs, int):
            if not isinstance(value, (list, tuple)):
                value = [value]  # a scalar where timm takes a list (e.g. ``lr_noise: 0.5``)
            if conv in (int, float) and any(isinstance(v, bool) for v in value):
                raise TypeError(f'expected {conv.__name__} values, got a boolean')
            out = [conv(v) for v in value] if conv is not None else list(value)
            if isinstance(action.nargs, int) and len(out) != action.nargs:
                raise ValueError(f'expected {action.nargs} values, got {len(out)}')
            if action.nargs == '+' and not out:
                raise ValueError('expected at least one value')
            value = out
        elif conv is not None:
            if conv in (int, float) and isinstance(value, bool):
                raise TypeError(f'expected {conv.__name__}, got a boolean')
            if conv is int and isinstance(value, float) and not value.is_integer():
                raise ValueError('expected an integer')
            value = conv(value)
        if action.choices is not None:
            for v in value if isinstance(value, list) else [value]:
                if v not in action.choices:
                    raise ValueError(f'{v!r} is not one of {sorted(action.choices)}')
    except (TypeError, ValueError) as e:
        raise ConfigError(f'{source}: invalid value {value!r} for key {key!r} ({e})') from None
    return value


def _is_known_model(name: str) -> bool:
    if not isinstance(name, str) or not name:
        return False
    if name.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')):
        return True
    import timm
    return timm.is_model(name) or name in list_models()


def _model_error(name: Any, source: str) -> ConfigError:
    import timm
    names = sorted(set(list_models()) | set(timm.list_models()))
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    return ConfigError(f'{source}: model {name!r} is neither a zoo model nor a timm model.{hint}')


def load_config(path: str, parser: Optional[argparse.ArgumentParser] = None) -> Dict[str, Any]:
    """Read a YAML config into ``{dest: value}`` checked against ``parser``: unknown keys and bad values raise
    :class:`ConfigError` naming the key; timm-only keys at their timm default are dropped."""
    parser = parser or build_parser()
    if not os.path.isfile(path):
        raise ConfigError(f'config file not found: {path}')
    with open(path) as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f'{path}: not valid YAML ({e})') from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ConfigError(f'{path}: expected a mapping of argument names to values, got {type(cfg).__name__}')
    actions = _actions(parser)
    out = {}
    for key, value in cfg.items():
        if key == 'config':
            continue  # harmless: not part of the namespace
        if key in actions:
            out[key] = _coerce(key, value, actions[key], path)
        elif key in UNSUPPORTED_TIMM_KEYS:
            if value != UNSUPPORTED_TIMM_KEYS[key]:
                raise ConfigError(f'{path}: key {key!r} (timm train.py) is not supported by this trainer; '
                                  f'remove it or set it to timm\'s default {UNSUPPORTED_TIMM_KEYS[key]!r}')
        else:
            norm = str(key).replace('-', '_')
            close = [norm] if norm in actions else difflib.get_close_matches(norm, list(actions), n=3, cutoff=0.6)
            hint = f' Did you mean: {", ".join(close)}?' if close else ''
            raise ConfigError(f'{path}: unknown key {key!r}.{hint}')
    return out


def args_to_yaml(args: argparse.Namespace) -> str:
    """The YAML text of a namespace, as written to ``args.yaml`` (loads back through ``-c``)."""
    return yaml.safe_dump(vars(args), default_flow_style=False)


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, str]:
    """Parse ``argv`` (``sys.argv[1:]`` if None) the timm way: ``-c/--config`` YAML first, whose keys become defaults,
    then the command line overrides them. Returns ``(args, args_text)``; ``args_text`` is the YAML dump of ``args``
    (what the trainer writes as ``args.yaml``; ``parse_args(['-c', that_file])`` reproduces ``args``).

    Raises :class:`ConfigError` for an unusable config file (unknown key, bad value, unknown model)."""
    config_parser = _cli.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='', type=str, metavar='FILE')
    cfg_args, remaining = config_parser.parse_known_args(argv)
    parser = build_parser()
    cfg = {}
    if cfg_args.config:
        cfg = load_config(cfg_args.config, parser)
        parser.set_defaults(**cfg)
    args = parser.parse_args(remaining)
    del args.config
    if 'model' in cfg and args.model == cfg['model'] and not _is_known_model(args.model):
        raise _model_error(args.model, cfg_args.config)
    if args.data and not args.data_dir:
        args.data_dir = args.data  # deprecated positional, as in timm
    return args, args_to_yaml(args)


def resolve_lr(args: argparse.Namespace, world_size: int = 1) -> float:
    """timm's ``--lr`` / ``--lr-base`` rule. ``--lr`` wins when given; otherwise
    ``lr = lr_base * (batch_size * world_size * grad_accum_steps / lr_base_size)``, raised to the power 0.5 when
    ``lr_base_scale == 'sqrt'``; an empty ``lr_base_scale`` means 'sqrt' for Ada*/LAMB optimizers, 'linear' otherwise.
    Sets ``args.lr`` and returns it."""
    if args.lr is None:
        global_batch = args.batch_size * world_size * args.grad_accum_steps
        ratio = global_batch / args.lr_base_size
        scale = args.lr_base_scale
        if not scale:
            opt = args.opt.lower()
            scale = 'sqrt' if any(o in opt for o in ('ada', 'lamb')) else 'linear'
        if scale == 'sqrt':
            ratio = ratio ** 0.5
        args.lr = args.lr_base * ratio
    return args.lr


# ------------------------------------------------------------------------------------------------- value checks
# (dest, rule, lower, upper): 'int>=' whole number >= lower; 'range' lower <= x < upper (upper None: no bound);
# 'closed' lower <= x <= upper; '>0' strictly positive. None (unset) is always accepted.
_RULES = [
    ('epochs', 'int>=', 1, None), ('batch_size', 'int>=', 1, None), ('validation_batch_size', 'int>=', 1, None),
    ('workers', 'int>=', 0, None), ('grad_accum_steps', 'int>=', 1, None), ('checkpoint_hist', 'int>=', 1, None),
    ('val_interval', 'int>=', 1, None), ('log_interval', 'int>=', 1, None), ('warmup_epochs', 'int>=', 0, None),
    ('cooldown_epochs', 'int>=', 0, None), ('num_classes', 'int>=', 1, None), ('img_size', 'int>=', 1, None),
    ('in_chans', 'int>=', 1, None), ('lr_base_size', 'int>=', 1, None), ('start_epoch', 'int>=', 0, None),
    ('lr', '>0', None, None), ('lr_base', '>0', None, None), ('warmup_lr', 'range', 0.0, None),
    ('min_lr', 'range', 0.0, None), ('weight_decay', 'range', 0.0, None), ('momentum', 'closed', 0.0, 1.0),
    ('clip_grad', '>0', None, None), ('drop', 'range', 0.0, 1.0), ('drop_path', 'range', 0.0, 1.0),
    ('drop_connect', 'range', 0.0, 1.0), ('drop_block', 'range', 0.0, 1.0), ('smoothing', 'range', 0.0, 1.0),
    ('mixup', 'range', 0.0, None), ('cutmix', 'range', 0.0, None), ('mixup_prob', 'closed', 0.0, 1.0),
    ('hflip', 'closed', 0.0, 1.0), ('vflip', 'closed', 0.0, 1.0), ('reprob', 'closed', 0.0, 1.0),
    ('model_ema_decay', 'range', 0.0, 1.0), ('crop_pct', '>0', None, None),
]


def _flag(dest: str) -> str:
    short = {'batch_size': '-b/', 'workers': '-j/', 'validation_batch_size': '-vb/'}.get(dest, '')
    return short + '--' + dest.replace('_', '-')


def check_values(args: argparse.Namespace) -> None:
    """Raise :class:`ConfigError` naming the flag and its valid range for the first out-of-range value
    (epochs, batch size, learning rate, workers, drop / drop-path rates, ...): before anything is built or written.
    Flags ``args`` does not have are skipped (``tools/validate.py`` shares the check)."""
    import math
    for dest, rule, lo, hi in _RULES:
        v = getattr(args, dest, None)
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f'{_flag(dest)} {v}: expected a finite number')
        if rule == 'int>=' and v < lo:
            raise ConfigError(f'{_flag(dest)} {v}: expected a whole number >= {lo}')
        if rule == '>0' and v <= 0:
            raise ConfigError(f'{_flag(dest)} {v}: expected a number > 0')
        if rule == 'range' and (v < lo or (hi is not None and v >= hi)):
            raise ConfigError(f'{_flag(dest)} {v}: expected {lo} <= value' + (f' < {hi}' if hi is not None else ''))
        if rule == 'closed' and not lo <= v <= hi:
            raise ConfigError(f'{_flag(dest)} {v}: expected {lo} <= value <= {hi}')
    size = getattr(args, 'input_size', None)
    if size is not None and any(v < 1 for v in size):
        raise ConfigError(f'--input-size {" ".join(map(str, size))}: expected C H W, each >= 1')
    epochs, start = getattr(args, 'epochs', None), getattr(args, 'start_epoch', None)
    if epochs is not None and start is not None and start >= epochs:
        raise ConfigError(f'--start-epoch {start}: expected less than --epochs {epochs}')
    for dest in ('scale', 'ratio'):
        v = getattr(args, dest, None)
        if v is not None and (len(v) != 2 or not 0 < v[0] <= v[1]):
            raise ConfigError(f'{_flag(dest)} {" ".join(map(str, v))}: expected two numbers 0 < low <= high')
