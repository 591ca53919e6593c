"""Training for zoo (and timm) models: timm's flags, timm's building blocks.

``train(args)`` runs an experiment (:mod:`backbones.train.loop`); ``main(argv)`` is ``tools/train.py``;
``evaluate`` / ``validate_main`` are shared with ``tools/validate.py``.
"""
from .args import ConfigError, args_to_yaml, build_parser, load_config, parse_args, resolve_lr
from .cli import main
from .defaults import EMBEDDED_DEFAULTS, apply_run_defaults, explicit_keys
from .errors import CheckpointError, DataError, ModelError, TrainError
from .evaluation import evaluate
from .loop import train, train_one_epoch
from .validate import main as validate_main

__all__ = [
    'build_parser', 'parse_args', 'resolve_lr', 'load_config', 'args_to_yaml', 'ConfigError',
    'train', 'train_one_epoch', 'main', 'evaluate', 'validate_main', 'apply_run_defaults', 'explicit_keys',
    'EMBEDDED_DEFAULTS', 'TrainError', 'DataError', 'CheckpointError', 'ModelError',
]
