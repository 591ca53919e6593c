"""Run defaults on top of timm's flag defaults: the no-argument quick start and a CPU fallback.

timm's defaults describe an ImageNet run on GPUs (``resnet50``, 300 epochs, ``--device cuda``). Two situations get
better ones, each only for the flags the user did not give (on the command line or in a ``-c`` config):

* **No ``--data-dir`` and no ``--dataset``**: the run trains on the embedded shapes dataset, with
  :data:`EMBEDDED_DEFAULTS` (a small zoo model at the dataset's 64 px, a short AdamW schedule), so that
  ``python tools/train.py`` learns it on a laptop CPU in a few minutes.
* **No CUDA**: ``--device`` (timm: ``cuda``) falls back to ``cpu``.
"""
import argparse
import copy
import logging
import os
from typing import Dict, Optional, Sequence, Set

import torch

from .. import _cli
from .args import build_parser, load_config
from .quickstart import EMBEDDED_DEFAULTS, MODEL_BOUND

__all__ = ['EMBEDDED_DEFAULTS', 'explicit_keys', 'apply_run_defaults', 'available_cpus', 'configure_cpu_threads']

_logger = logging.getLogger('backbones.train')


def explicit_keys(argv: Optional[Sequence[str]]) -> Set[str]:
    """The argument names (``dest``) set by ``argv``: on the command line or in its ``-c/--config`` file."""
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = _cli.ArgumentParser(add_help=False)
    pre.add_argument('-c', '--config', default='', type=str)
    cfg_args, remaining = pre.parse_known_args(argv)
    keys: Set[str] = set()
    parser = build_parser()
    if cfg_args.config:
        keys |= set(load_config(cfg_args.config, parser))
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    keys |= set(vars(parser.parse_args(remaining)))
    if 'data' in keys:
        keys.add('data_dir')
    if 'drop_connect' in keys:
        keys.add('drop_path')
    return keys


def apply_run_defaults(args: argparse.Namespace, explicit: Set[str], log: bool = True) -> Dict[str, object]:
    """Apply :data:`EMBEDDED_DEFAULTS` (no data given) and the CPU fallback to the flags not in ``explicit``.
    Returns what was changed."""
    changed: Dict[str, object] = {}
    if not args.data_dir and not args.dataset:
        for key, value in EMBEDDED_DEFAULTS.items():
            if key in explicit:
                continue
            if key == 'lr' and 'lr_base' in explicit:
                continue  # the user chose the lr_base rule
            if key == 'img_size' and 'input_size' in explicit:
                continue
            if key in MODEL_BOUND and 'model' in explicit:
                continue  # settings of the default model only
            setattr(args, key, copy.deepcopy(value))
            changed[key] = value
        if log:
            shown = ', '.join(f'{k}={v}' for k, v in changed.items())
            _logger.info(f'no --data-dir: training on the embedded shapes dataset with the quick-start defaults '
                         f'{shown or "(all overridden)"}; any flag overrides them')
    if 'device' not in explicit and str(args.device).startswith('cuda') and not torch.cuda.is_available():
        args.device = 'cpu'
        changed['device'] = 'cpu'
        if log:
            _logger.info('CUDA is not available: training on the CPU (--device cpu)')
    return changed


def available_cpus() -> int:
    """The CPUs this process may run on (``taskset`` / container CPU sets count, unlike ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def configure_cpu_threads(workers: int, log: bool = True) -> int:
    """On CPU, unless ``OMP_NUM_THREADS`` says otherwise: one compute thread per core not taken by a data worker.

    On a small machine, compute threads that compete with the data workers (or with other jobs) for the same cores
    spin at OpenMP barriers and run many times slower (measured: 2 threads on a busy 2-core machine trained ~100x
    slower than 1). Returns the number of threads."""
    if 'OMP_NUM_THREADS' in os.environ:
        return torch.get_num_threads()
    threads = max(1, min(torch.get_num_threads(), available_cpus() - workers))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    if log:
        _logger.info(f'CPU: {threads} compute thread(s), {workers} data worker(s) (OMP_NUM_THREADS to choose)')
    return threads
