"""Training for zoo (and timm) models: timm's flags, timm's building blocks."""
from .args import ConfigError, args_to_yaml, build_parser, load_config, parse_args, resolve_lr

__all__ = ['build_parser', 'parse_args', 'resolve_lr', 'load_config', 'args_to_yaml', 'ConfigError']
