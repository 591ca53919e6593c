"""Building the model of a run: ``timm.create_model`` with timm train.py's arguments, and the weights it starts from.

* ``--pretrained``: timm's released weights (``pretrained_cfg``), or a ``hf-hub:`` / ``local-dir:`` model; when
  ``--num-classes`` differs from the weights' head, timm drops that head and the log says which keys.
* ``--pretrained-path FILE_OR_DIR``: fine-tuning from a file (``.safetensors``, ``.pth``/``.pth.tar`` training
  checkpoint, EMA weights preferred, official layouts of zoo families converted) or a ``save_for_hf`` folder. The
  backbone is loaded strictly; the classifier is loaded when its shape fits and otherwise replaced by a new head,
  logging the dropped keys and their shapes.
* ``--initial-checkpoint FILE``: the whole model, strictly (timm's semantics).

Files are read with safetensors or ``torch.load(weights_only=True)`` only. Problems are one-line
:class:`ModelError` / :class:`CheckpointError`\\ s.
"""
import difflib
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn

from .._checkpoint import (
    CheckpointMismatchError,
    caller_adapts,
    check_finite,
    family_filter_fn,
    select_state_dict,
)
from .._registry import get_family, list_models
from .checkpoint import load_model_state, read_checkpoint
from .errors import CheckpointError, ModelError, one_line

__all__ = [
    'create_train_model', 'load_pretrained_path', 'check_model_name', 'check_model_input', 'input_size_problem',
    'classifier_keys',
]

_logger = logging.getLogger('backbones.train')
_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'open_clip_pytorch_model.bin')


def check_model_name(name: str) -> None:
    """Raise :class:`ModelError` unless ``name`` is a zoo / timm model (or an ``hf-hub:`` / ``local-dir:`` spec)."""
    if name.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')):
        check_hub_model(name)
        return
    if timm.is_model(name.split('.')[0]) or name in list_models():
        return
    names = sorted(set(list_models()) | set(timm.list_models()))
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f'; did you mean {", ".join(close)}?' if close else ' (zoo models: backbones.list_models())'
    raise ModelError(f"unknown model '{name}'{hint}")


def check_hub_model(name: str) -> None:
    """A ``local-dir:`` folder or an ``hf-hub:`` repo, checked as :mod:`backbones.hub` checks them (a bad
    ``config.json`` names the file; an ``hf-hub:`` repo is pulled, or found in the cache at once when offline)."""
    from .. import hub
    try:
        if name.startswith('local-dir:'):
            hub._check_local_dir(Path(name[len('local-dir:'):]))
        else:
            hub.pull(name.split(':', 1)[1])
    except hub.HubError as e:
        raise ModelError(one_line(e)) from None


def classifier_keys(model: nn.Module) -> List[str]:
    """Names of the classifier's parameters (from ``pretrained_cfg['classifier']``)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    cls = cfg.get('classifier')
    prefixes = [cls] if isinstance(cls, str) else list(cls or [])
    return [k for k in model.state_dict() if any(k == p or k.startswith(p + '.') for p in prefixes)]


def _arch(model: nn.Module) -> Optional[str]:
    return (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        for name in _WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f'{path} has no weights file ({", ".join(_WEIGHT_FILES)}): not a save_for_hf folder')
    if not path.is_file():
        raise CheckpointError(f'pretrained weights not found: {path}')
    return path


def _read_state_dict(path: Path, model: nn.Module) -> Dict[str, torch.Tensor]:
    ck = read_checkpoint(path)
    arch = _arch(model)
    prefer = get_family(arch).checkpoint_key if arch in list_models() else ''
    try:  # the zoo's container policy: a training checkpoint's EMA weights first, a release the family's entry
        return select_state_dict(ck, prefer=prefer)[0]
    except CheckpointMismatchError as e:
        raise CheckpointError(f'{path}: {one_line(e)}') from None


def load_pretrained_path(model: nn.Module, path, log: bool = True) -> Dict[str, Any]:
    """Load the weights at ``path`` (file or ``save_for_hf`` folder) into ``model`` for fine-tuning.

    Every non-classifier tensor must fit; classifier tensors of another shape are dropped (the model keeps its freshly
    initialised head). Returns ``{'loaded': [...], 'dropped': {key: shape}, 'file': ...}``."""
    file = _weights_file(Path(path))
    sd = _read_state_dict(file, model)
    arch = _arch(model)
    if arch in list_models():
        try:  # the family's filter converts official / timm layouts to ours and checks every non-head key
            with caller_adapts():  # the head and the input channels are fitted below
                sd = family_filter_fn(arch)(sd, model)
        except CheckpointMismatchError as e:
            raise CheckpointError(f'{file} does not fit {arch}: {_mismatch_summary(str(e))}') from None
    try:
        check_finite(sd, str(file))
    except CheckpointMismatchError as e:
        raise CheckpointError(str(e)) from None
    own = model.state_dict()
    head = set(classifier_keys(model))
    dropped = {k: tuple(v.shape) for k, v in sd.items() if k in head and k in own and v.shape != own[k].shape}
    for k in dropped:
        del sd[k]
    first_conv = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv')
    if isinstance(first_conv, str) and f'{first_conv}.weight' in sd and f'{first_conv}.weight' in own:
        w, want = sd[f'{first_conv}.weight'], own[f'{first_conv}.weight']
        if w.ndim == 4 and w.shape[1] != want.shape[1] and w.shape[0] == want.shape[0]:
            from timm.models import adapt_input_conv
            sd[f'{first_conv}.weight'] = adapt_input_conv(want.shape[1], w)
    shapes = [f'{k} {tuple(v.shape)} vs {tuple(own[k].shape)}' for k, v in sd.items()
              if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in sd and k not in head and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in sd if k not in own and k not in head]
    if shapes or missing or unexpected:
        parts = [f'{len(x)} {w} (e.g. {x[0]})' for x, w in
                 ((missing, 'missing'), (unexpected, 'unexpected'), (shapes, 'of another shape')) if x]
        raise CheckpointError(f'{file} does not fit {arch or type(model).__name__}: {"; ".join(parts)}')
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    loaded = [k for k in sd if k in own]
    if log:
        n_cls = getattr(model, 'num_classes', None)
        if dropped:
            shown = ', '.join(f'{k} {list(s)}' for k, s in dropped.items())
            _logger.info(f'fine-tuning from {file}: loaded {len(loaded)} tensors (the backbone); NEW head '
                         f'{", ".join(sorted(head))} for {n_cls} classes, dropped from the checkpoint: {shown}')
        else:
            _logger.info(f'loaded {len(loaded)} tensors from {file}, the classifier included ({n_cls} classes)')
    return {'file': str(file), 'loaded': loaded, 'dropped': dropped}


def _mismatch_summary(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) <= 1:  # a one-line message (e.g. non-finite values): itself
        return lines[0] if lines else 'keys differ'
    details = [ln for ln in lines[1:] if not ln.startswith('expected')]
    return '; '.join(details[:3]) if details else 'keys differ'


def _in_chans(args) -> int:
    if args.in_chans is not None:
        return args.in_chans
    if args.input_size is not None:
        return args.input_size[0]
    return 3


def _model_kwargs(args) -> Dict[str, Any]:
    drop_path = args.drop_path
    if drop_path is None and args.drop_connect is not None:
        drop_path = args.drop_connect  # deprecated alias, as in timm
    kwargs = dict(
        in_chans=_in_chans(args), num_classes=args.num_classes, drop_rate=args.drop, drop_path_rate=drop_path,
        drop_block_rate=args.drop_block, global_pool=args.gp, bn_momentum=args.bn_momentum, bn_eps=args.bn_eps,
        scriptable=args.torchscript,
    )
    kwargs.update(args.model_kwargs or {})
    return kwargs


def _size_flag(args, c: int, h: int, w: int) -> str:
    if args.input_size is not None:
        return f'--input-size {c} {h} {w}'
    if args.img_size is not None:
        return f'--img-size {args.img_size}'
    return f"the model's default input size {c}x{h}x{w}"


def check_model_input(args) -> None:
    """Build the model on the meta device (no memory, no init) and run one meta forward at the run's input size:
    an unknown model, bad ``--model-kwargs`` or a size the model cannot take (its input-size rule) is a one-line
    :class:`ModelError` before any data is read or anything is written."""
    from timm.data import resolve_data_config
    check_model_name(args.model)
    try:
        model = timm.create_model(args.model, pretrained=False, device='meta', **_model_kwargs(args))
    except TypeError as e:
        raise ModelError(f"model '{args.model}' cannot be built with these arguments: {one_line(e)}") from None
    except (RuntimeError, ValueError, OSError, AssertionError) as e:
        raise ModelError(f"cannot build model '{args.model}': {one_line(e)}") from None
    c, h, w = resolve_data_config(vars(args), model=model, verbose=False)['input_size']
    problem = input_size_problem(model, (c, h, w))
    if problem:
        raise ModelError(f'{_size_flag(args, c, h, w)}: {args.model} cannot take {c}x{h}x{w} inputs: {problem}')


def input_size_problem(model: nn.Module, input_size: Tuple[int, int, int]) -> Optional[str]:
    """Why ``model`` (built on the meta device) cannot take ``(C, H, W)`` inputs, in one line, or None: one forward
    of a meta batch (no memory, no compute) meets the model's input checks (its size rule, its minimum)."""
    try:
        with torch.no_grad():
            model.eval()(torch.empty(2, *input_size, device='meta'))
    except NotImplementedError:
        return None  # an op without a meta kernel: the real forward will tell
    except (ValueError, RuntimeError, TypeError, AssertionError) as e:
        return one_line(e)
    return None


def create_train_model(args, log: bool = True) -> Tuple[nn.Module, Dict[str, Any]]:
    """``timm.create_model`` with timm train.py's arguments; then ``--pretrained-path`` / ``--initial-checkpoint``
    weights, head init scale / bias and gradient checkpointing. Returns ``(model, info)``."""
    check_model_name(args.model)
    kwargs = _model_kwargs(args)
    pretrained = bool(args.pretrained) and not args.pretrained_path
    try:
        model = timm.create_model(args.model, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise ModelError(f"model '{args.model}' cannot be built with these arguments: {one_line(e)}") from None
    except CheckpointMismatchError as e:
        raise CheckpointError(f"pretrained weights of '{args.model}' do not fit: {one_line(e)}") from None
    except (RuntimeError, ValueError, OSError) as e:
        msg = one_line(e)
        if pretrained and ('pretrained' in msg.lower() or 'weights' in msg.lower()):
            raise ModelError(f"--pretrained: {msg} (for a downloaded file use --pretrained-path FILE)") from None
        raise ModelError(f"cannot build model '{args.model}': {msg}") from None
    info: Dict[str, Any] = {'head': classifier_keys(model)}
    if pretrained and log:
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        src = cfg.get('hf_hub_id') or cfg.get('url') or cfg.get('file') or args.model
        pre_n = cfg.get('num_classes')
        if pre_n is not None and args.num_classes is not None and pre_n != model.num_classes:
            _logger.info(f'fine-tuning from the pretrained weights of {args.model} ({src}): backbone loaded; NEW '
                         f'head {", ".join(info["head"])} for {model.num_classes} classes, the pretrained '
                         f'{pre_n}-class head was dropped')
        else:
            _logger.info(f'loaded the pretrained weights of {args.model} ({src}), head included')
    if args.pretrained_path:
        info['pretrained'] = load_pretrained_path(model, args.pretrained_path, log=log)
    if args.initial_checkpoint:
        path = Path(args.initial_checkpoint)
        if not path.is_file():
            raise CheckpointError(f'--initial-checkpoint not found: {path}')
        sd = _read_state_dict(path, model)
        arch = _arch(model)
        if arch in list_models():
            try:
                sd = family_filter_fn(arch)(sd, model)
            except CheckpointMismatchError as e:
                raise CheckpointError(f'{path} does not fit {arch}: {_mismatch_summary(str(e))}') from None
        load_model_state(model, sd, str(path), what='--initial-checkpoint weights')
        if log:
            _logger.info(f'loaded --initial-checkpoint {path}')
    if args.head_init_scale is not None or args.head_init_bias is not None:
        head = model.get_classifier()
        with torch.no_grad():
            if args.head_init_scale is not None:
                head.weight.mul_(args.head_init_scale)
                head.bias.mul_(args.head_init_scale)
            if args.head_init_bias is not None:
                nn.init.constant_(head.bias, args.head_init_bias)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model, info
