"""``tools/train.py``: parse the arguments, apply the run defaults, train; bad input is one line on stderr."""
import os
import sys
from typing import Optional, Sequence

from .._cli import run, setup_logging
from .args import ConfigError, args_to_yaml, check_values, parse_args
from .defaults import apply_run_defaults, explicit_keys
from .errors import TrainError, one_line

__all__ = ['main']


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Train as ``argv`` (timm train.py flags) says. Returns the exit status: 0; 2 for bad input; 130 after Ctrl-C;
    1 for anything else. Every error is one ``error:`` line on stderr (``BACKBONES_TRACEBACK=1``: the traceback)."""
    return run(_main, argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    from .loop import train
    setup_logging()
    primary = int(os.environ.get('RANK', '0')) == 0
    try:
        args, _ = parse_args(argv)
        check_values(args)
        apply_run_defaults(args, explicit_keys(argv), log=primary)
        train(args, args_to_yaml(args))
    except (TrainError, ConfigError) as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        return getattr(e, 'exit_code', 2)
    except KeyboardInterrupt:
        print('error: interrupted (Ctrl-C) before the first epoch ended: no checkpoint was written', file=sys.stderr)
        return 130
    return 0
