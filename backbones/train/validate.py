"""``tools/validate.py``: top-1 / top-5 of models on a dataset, through :func:`.evaluation.evaluate` (the training
loop's own evaluation, so a checkpoint validates to exactly the top-1 training logged for it).

:func:`main`: weights from ``--pretrained``, ``--checkpoint`` (a training checkpoint, whose EMA weights are used when
present, and whose model, model arguments and eval transforms are the defaults), a weights file, or an ``hf-hub:`` /
``local-dir:`` model; ``--model`` may be an fnmatch pattern to evaluate many models into one CSV / JSON file with
params, GMACs and images/s.
"""
import argparse
import contextlib
import csv
import io
import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Mapping, Optional, Sequence

import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.utils import ParseKwargs

from .. import _cli
from .._checkpoint import (
    CheckpointMismatchError,
    caller_adapts,
    family_filter_fn,
    select_state_dict,
)
from .._registry import list_models
from .args import check_values
from .checkpoint import atomic_write_text, load_model_state, read_checkpoint
from .data import build_datasets, create_eval_loader, data_config_summary, resolve_data_root
from .defaults import configure_cpu_threads
from .errors import CheckpointError, DataError, ModelError, TrainError, one_line
from .evaluation import evaluate
from .model import check_model_name, classifier_keys
from .progress import Progress

__all__ = ['evaluate', 'main', 'build_parser', 'validate_model']  # evaluate: re-exported from .evaluation

_logger = logging.getLogger('backbones.validate')


# ------------------------------------------------------------------------------------------------ tools/validate.py
def build_parser() -> argparse.ArgumentParser:
    p = _cli.ArgumentParser(
        description='Top-1 / top-5 of zoo (or timm) models on an ImageFolder or a timm dataset spec, with the '
                    "model's own eval transforms. Without --data-dir: the embedded shapes dataset's val split.")
    p.add_argument('data', nargs='?', metavar='DIR', help='path to dataset (positional, deprecated: --data-dir)')
    p.add_argument('--data-dir', metavar='DIR', help='dataset root (ImageFolder; the --split sub-folder is used '
                                                       'when it exists)')
    p.add_argument('--dataset', default='', metavar='NAME', help='timm dataset spec, e.g. torch/cifar10 (default: '
                                                                  'folder)')
    p.add_argument('--split', default='validation', help='dataset split (default: validation; finds val/ too)')
    p.add_argument('--num-samples', type=int, default=None, help='number of samples (iterable datasets)')
    p.add_argument('--dataset-download', action='store_true', default=False, help='allow dataset download')
    p.add_argument('--class-map', default='', metavar='FILENAME', help='class to index mapping file')
    p.add_argument('--input-key', default=None, help='dataset key for input images')
    p.add_argument('--target-key', default=None, help='dataset key for target labels')
    p.add_argument('--input-img-mode', default=None, help='image mode (default: RGB, or L for one channel)')
    p.add_argument('--model', '-m', default=None, metavar='NAME',
                   help="model name, fnmatch pattern ('rednet*', 'all' = every zoo model), hf-hub:ORG/NAME or "
                        'local-dir:PATH (default: the --checkpoint\'s model)')
    p.add_argument('--pretrained', action='store_true', default=False, help="use the model's released weights")
    p.add_argument('--checkpoint', default='', metavar='PATH',
                   help='training checkpoint (.pth.tar), weights file (.safetensors / .pth) or save_for_hf folder')
    ema = p.add_mutually_exclusive_group()
    ema.add_argument('--use-ema', dest='ema', action='store_const', const='yes', default='auto',
                     help="require the checkpoint's EMA weights (state_dict_ema)")
    ema.add_argument('--no-ema', dest='ema', action='store_const', const='no',
                     help="use the checkpoint's raw weights (state_dict) even when it holds EMA weights")
    p.add_argument('--num-classes', type=int, default=None, help='number of classes (default: the weights\')')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='extra model kwargs k=v (default: the checkpoint\'s)')
    p.add_argument('--gp', default=None, metavar='POOL', help='global pool type')
    p.add_argument('--in-chans', type=int, default=None, metavar='N', help='input channels')
    p.add_argument('--img-size', type=int, default=None, metavar='N', help='input image size')
    p.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N', help='input size C H W')
    p.add_argument('--crop-pct', default=None, type=float, metavar='PCT', help='center crop percentage')
    p.add_argument('--crop-mode', default=None, type=str, help='crop mode: center, squash, border')
    p.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN', help='normalization mean')
    p.add_argument('--std', type=float, nargs='+', default=None, metavar='STD', help='normalization std')
    p.add_argument('--interpolation', default='', type=str, metavar='NAME', help='resize interpolation')
    p.add_argument('-b', '--batch-size', default=256, type=int, metavar='N', help='batch size (default: 256)')
    p.add_argument('-j', '--workers', default=min(4, os.cpu_count() or 1), type=int, metavar='N',
                   help='data loading workers')
    p.add_argument('--device', default=None, help='device (default: cuda when available, else cpu)')
    p.add_argument('--amp', action='store_true', default=False, help='mixed precision (autocast)')
    p.add_argument('--amp-dtype', default='float16', help='autocast dtype: float16 or bfloat16')
    p.add_argument('--channels-last', action='store_true', default=False, help='channels_last memory layout')
    p.add_argument('--no-prefetcher', action='store_true', default=False, help='disable the prefetch loader')
    p.add_argument('--pin-mem', action='store_true', default=False, help='pin memory')
    p.add_argument('--no-count', action='store_true', default=False, help='skip the params / GMACs count')
    p.add_argument('--results-file', default='', metavar='PATH', help='write results to this CSV or JSON file')
    p.add_argument('--results-format', default='', choices=['', 'csv', 'json'],
                   help='results format (default: from the file extension, else csv)')
    p.add_argument('--log-interval', default=50, type=int, metavar='N', help='progress lines every N batches')
    return p


_PATTERN_CHARS = set('*?[')


def resolve_model_names(model: str, pretrained: bool = False) -> List[str]:
    """``model`` itself, or the zoo (else timm) models matching it when it is a pattern (``all``: the whole zoo)."""
    if model == 'all':
        model = '*'
    if not (_PATTERN_CHARS & set(model)) or model.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')):
        return [model]
    names = list_models(model)
    if not names:
        names = timm.list_models(model, pretrained=pretrained)
    if not names:
        raise ModelError(f"no zoo or timm model matches '{model}'")
    return names


def _read_checkpoint(path: str) -> Dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f'{path} is a folder: pass it as --model local-dir:{path}')
    ck = read_checkpoint(p)
    if not isinstance(ck, Mapping):
        raise CheckpointError(f'{path} holds a {type(ck).__name__}, not a checkpoint (a dict of weights)')
    return dict(ck)


def _ck_args(ck: Mapping[str, Any]) -> Dict[str, Any]:
    a = ck.get('args')
    if isinstance(a, Mapping):
        return dict(a)
    if isinstance(a, argparse.Namespace):
        return vars(a)
    return {}


def _select_weights(ck: Mapping[str, Any], ema: str, path: str) -> tuple:
    """``(state_dict, 'ema' | 'model' | 'weights')``: the zoo's container policy
    (:func:`~backbones._checkpoint.select_state_dict`: EMA weights when present, unless ``--no-ema``)."""
    try:
        return select_state_dict(ck, ema=ema, what=f'--use-ema: {path}')
    except CheckpointMismatchError as e:
        msg = one_line(e)
        raise CheckpointError(msg if msg.startswith('--use-ema') else f'{path}: {msg}') from None


def _device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dev = torch.device(name)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise TrainError(f'--device {name}: CUDA is not available (use --device cpu)')
    return dev


def _data_overrides(args) -> Dict[str, Any]:
    """The data-config keys given on the command line (``resolve_data_config`` argument names)."""
    out = {}
    for k in ('img_size', 'input_size', 'crop_pct', 'crop_mode', 'mean', 'std', 'in_chans'):
        v = getattr(args, k)
        if v is not None:
            out[k] = v
    if args.interpolation:
        out['interpolation'] = args.interpolation
    return out


def _resolve_data_config(args, model: nn.Module, ck_data_config: Optional[Mapping[str, Any]]):
    """Command line > the checkpoint's eval data config (what training validated with) > the model's cfg."""
    given = _data_overrides(args)
    cfg = resolve_data_config(given, model=model)
    source = 'model pretrained_cfg'
    if ck_data_config:
        size_given = 'img_size' in given or 'input_size' in given
        for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode'):
            if k not in ck_data_config or ck_data_config[k] is None:
                continue
            if k in given or (k == 'input_size' and size_given):
                continue
            v = ck_data_config[k]
            cfg[k] = tuple(v) if isinstance(v, list) else v
        source = 'checkpoint (training eval config)'
    if given:
        source += ' + command line'
    return cfg, source


def validate_model(name: str, args, dataset, class_names: Optional[Sequence[str]], device: torch.device,
                   log: bool = True) -> Dict[str, Any]:
    """Build model ``name`` with the weights ``args`` asks for, evaluate it on ``dataset``; one result row."""
    ck, sd, weights_kind = _checkpoint_weights(args, log)
    check_model_name(name)
    model, weights_kind = _build_model(name, args, _ck_args(ck) if ck else {}, sd, weights_kind)
    if class_names is not None and model.num_classes < len(class_names):
        raise DataError(f'the dataset has {len(class_names)} classes, model {name} outputs {model.num_classes} '
                        f'(pass --num-classes or the matching checkpoint)')
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    data_config, cfg_source = _resolve_data_config(args, model, ck.get('data_config') if ck else None)
    if log:
        _logger.info(f'{name}: eval transforms from the {cfg_source}: {data_config_summary(data_config)}')
    loader = create_eval_loader(dataset, data_config, args.batch_size, args.workers, device,
                                use_prefetcher=not args.no_prefetcher, pin_memory=args.pin_mem)
    amp = contextlib.nullcontext
    if args.amp:
        dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
        amp = lambda: torch.autocast(device_type=device.type, dtype=dtype)
    prog = Progress(len(loader), f'validate {name}', enabled=log, log_interval=args.log_interval)
    try:
        m = evaluate(model, loader, device, amp_autocast=amp, channels_last=args.channels_last,
                     use_prefetcher=not args.no_prefetcher, progress=prog)
    finally:
        prog.close()
    return _result_row(name, args, model, m, data_config, weights_kind, log)


def _checkpoint_weights(args, log: bool) -> tuple:
    """``(checkpoint, state_dict, weights kind)`` of ``--checkpoint`` (``(None, None, 'random init')`` without)."""
    if not args.checkpoint:
        return None, None, 'random init'
    ck = _read_checkpoint(args.checkpoint)
    sd, weights_kind = _select_weights(ck, args.ema, args.checkpoint)
    if log:
        what = {'ema': "the EMA weights (state_dict_ema; --no-ema for the raw weights)",
                'model': 'the model weights (state_dict)', 'weights': 'the weights'}[weights_kind]
        _logger.info(f'{args.checkpoint}: using {what}')
    return ck, sd, weights_kind


def _build_model(name: str, args, ck_args: Dict[str, Any], sd: Optional[Mapping[str, torch.Tensor]],
                 weights_kind: str) -> tuple:
    """``(model, weights kind)``: built with the checkpoint's and the command line's arguments, holding ``sd`` (the
    checkpoint's weights, through its family's filter) or the released weights (``--pretrained``, a Hub model)."""
    kwargs = dict(ck_args.get('model_kwargs') or {})
    kwargs.update(args.model_kwargs or {})
    num_classes = args.num_classes if args.num_classes is not None else ck_args.get('num_classes')
    if num_classes is None and sd is not None:
        num_classes = _head_size(name, sd, kwargs)
    build = dict(kwargs)
    for k, v in (('num_classes', num_classes), ('global_pool', args.gp or ck_args.get('gp')),
                 ('in_chans', args.in_chans or ck_args.get('in_chans'))):
        if v is not None:
            build[k] = v
    pretrained = sd is None and (args.pretrained or name.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')))
    try:
        model = timm.create_model(name, pretrained=pretrained, **build)
    except TypeError as e:
        raise ModelError(f"model '{name}' cannot be built with these arguments: {one_line(e)}") from None
    except (RuntimeError, ValueError, OSError) as e:
        raise ModelError(f"cannot build model '{name}'{' with pretrained weights' if pretrained else ''}: "
                         f'{one_line(e)}') from None
    if pretrained:
        weights_classes = (getattr(model, 'pretrained_cfg', None) or {}).get('num_classes')
        if weights_classes is not None and weights_classes != model.num_classes:
            raise CheckpointError(
                f'--num-classes {model.num_classes}: the weights of {name} have a {weights_classes}-class '
                f'classifier, which a new {model.num_classes}-class head would replace with untrained weights; '
                f'drop --num-classes to validate the trained head')
        return model, 'pretrained'
    if sd is not None:
        arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
        if arch in list_models():
            try:
                sd = family_filter_fn(arch)(sd, model)
            except CheckpointMismatchError as e:
                raise CheckpointError(f'{args.checkpoint} does not fit {arch}: '
                                      f'{" ".join(str(e).split())[:300]}') from None
        load_model_state(model, sd, args.checkpoint)
    return model, weights_kind


def _result_row(name: str, args, model: nn.Module, m: Dict[str, Any], data_config: Dict[str, Any],
                weights_kind: str, log: bool) -> Dict[str, Any]:
    """The result row of one model (params and GMACs counted unless ``--no-count``), logged when ``log``."""
    params, gmacs = sum(p.numel() for p in model.parameters()), None
    if not args.no_count:
        from ..flops import count  # on use: fvcore is only needed for counting
        try:
            c = count(model, input_size=tuple(data_config['input_size']))
            params, gmacs = c.params, round(c.gmacs, 4)
        except Exception as e:  # noqa: BLE001 - a count failure must not lose the accuracy
            _logger.warning(f'{name}: GMACs count failed ({one_line(e)})')
    row = {
        'model': name, 'weights': args.checkpoint or weights_kind, 'ema': weights_kind == 'ema',
        'top1': m['top1'], 'top5': m['top5'], 'loss': round(m['loss'], 6), 'images': m['count'],
        'num_classes': model.num_classes, 'params_m': round(params / 1e6, 4), 'gmacs': gmacs,
        'img_size': int(data_config['input_size'][-1]), 'crop_pct': data_config['crop_pct'],
        'interpolation': data_config['interpolation'], 'img_per_sec': round(m['img_per_sec'], 2),
    }
    if log:
        _logger.info(f"{name}: top-1 {row['top1']:.3f}  top-5 {row['top5']:.3f}  loss {row['loss']:.4f}  "
                     f"({row['images']} images, {row['img_per_sec']:.1f} img/s, {row['params_m']:.2f}M params"
                     + (f", {gmacs:.3f} GMACs" if gmacs is not None else '') + ')')
    return row


def _head_size(name: str, sd: Mapping[str, torch.Tensor], kwargs: Dict[str, Any]) -> Optional[int]:
    """The checkpoint's class count, read after the family's filter maps an official layout onto ours."""
    try:
        probe = timm.create_model(name, device='meta', **kwargs)
        arch = (getattr(probe, 'pretrained_cfg', None) or {}).get('architecture')
        if arch in list_models():
            with caller_adapts():
                sd = family_filter_fn(arch)(sd, probe)
    except Exception:  # noqa: BLE001 - the strict load that follows says what does not fit
        return None
    for k in classifier_keys(probe):
        if k.endswith('weight') and k in sd:
            return int(sd[k].shape[0])
    return None


def _write_results(rows: List[Dict[str, Any]], path: str, fmt: str) -> None:
    fmt = fmt or ('json' if path.lower().endswith('.json') else 'csv')
    if fmt == 'json':
        text = json.dumps(rows, indent=2)
    else:
        keys: List[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        text = buf.getvalue()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/validate.py``. Returns the exit status (0 ok, 1 some model failed or another error, 2 bad input, 130
    Ctrl-C); every error is one ``error:`` line on stderr."""
    return _cli.run(_main, argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    _cli.setup_logging()
    args = build_parser().parse_args(argv)
    try:
        rows, failed = run(args)
    except (TrainError, ValueError) as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        return 2
    return 1 if failed else 0


def run(args) -> tuple:
    """Evaluate every model ``args`` names; returns ``(rows, failed)``."""
    check_values(args)  # batch size, workers, num classes, sizes: the flags the two tools share
    device = _device(args.device)
    if device.type == 'cpu':
        configure_cpu_threads(args.workers)
    if args.data and not args.data_dir:
        args.data_dir = args.data
    if not args.model:
        if not args.checkpoint:
            raise TrainError('give --model NAME (or a pattern), or a --checkpoint to take the model from')
        ck = _read_checkpoint(args.checkpoint)
        args.model = ck.get('arch') or _ck_args(ck).get('model')
        if not args.model:
            raise TrainError(f'{args.checkpoint} does not name its model: pass --model')
    if args.checkpoint and (args.model == 'all' or _PATTERN_CHARS & set(args.model)):
        raise TrainError('--checkpoint holds the weights of one model: --model cannot be a pattern with it')
    names = resolve_model_names(args.model, args.pretrained)
    root, embedded = resolve_data_root(args.data_dir, args.dataset)
    if embedded:
        _logger.info(f'no --data-dir: validating on the embedded shapes dataset ({root}, split {args.split})')
    ns = SimpleNamespace(
        data_dir=root, dataset=args.dataset, train_split='train', val_split=args.split, class_map=args.class_map,
        dataset_download=args.dataset_download, batch_size=args.batch_size, seed=42, epoch_repeats=0,
        input_key=args.input_key, target_key=args.target_key, train_num_samples=None,
        val_num_samples=args.num_samples, dataset_trust_remote_code=False, in_chans=args.in_chans,
        input_size=args.input_size, input_img_mode=args.input_img_mode, num_classes=None)
    data = build_datasets(ns, need_train=False)
    rows, failed = [], 0
    for name in names:
        try:
            rows.append(validate_model(name, args, data.eval, data.class_names, device))
        except (TrainError, ValueError) as e:
            if len(names) == 1:
                raise
            failed += 1
            _logger.error(f'{name}: {one_line(e)}')
            rows.append({'model': name, 'error': one_line(e)})
    if args.results_file:
        _write_results(rows, args.results_file, args.results_format)
        _logger.info(f'results of {len(rows)} model(s) written to {args.results_file}')
    if len(rows) > 1:
        _print_table(rows)
    return rows, failed


def _print_table(rows: List[Dict[str, Any]]) -> None:
    cols = ['model', 'top1', 'top5', 'params_m', 'gmacs', 'img_size', 'img_per_sec']
    def cell(r, c):
        v = r.get(c, r.get('error', '') if c == 'top1' else '')
        return f'{v:.3f}' if isinstance(v, float) and c in ('top1', 'top5') else str(v)
    table = [[cell(r, c) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print('  '.join(c.ljust(w) for c, w in zip(cols, widths)))
    for t in table:
        print('  '.join(v.ljust(w) for v, w in zip(t, widths)))
