"""Checkpoint reading and checking shared by every family's ``checkpoint_filter_fn`` and by every loading path.

Two policies live here and nowhere else: which weights of a container to use (:func:`select_state_dict`: EMA weights
first, as timm, a family's ``checkpoint_key`` where its official evaluation reads another entry) and whether a state
dict fits a model (:func:`check_state_dict`, whose messages every loading path shares).

A family describes how a foreign layout (official code, timm) maps onto ours as an ordered list of
``(regex, replacement)`` rules; :func:`convert_state_dict` unwraps the usual containers, renames every key that is
not already ours, and checks the result against the model (:func:`check_state_dict`), raising a
:class:`CheckpointMismatchError` that names what is missing, unexpected or of another shape instead of letting
``load_state_dict`` fail later with a bare key dump. The check covers every key, with two adaptations timm makes
after the filter, so ``timm.create_model(..., pretrained=True)`` keeps working for every family:

* **the first conv** may differ in its input channels when timm will adapt it (the model was built with an
  ``in_chans`` other than the weights' ``input_size[0]``); any other difference is an error naming the key;
* **the classifier** may differ in size when the model was built with a ``num_classes`` other than the weights'
  (timm drops the head by design). A head that does not fit a model built for the weights' class count is an error
  that says how many classes the checkpoint has; a head that fits the asked-for ``num_classes`` is kept.

Callers that rebuild or re-head the model themselves (``tools/convert.py``, :mod:`backbones.hub`, fine-tuning) run
the filter inside :func:`caller_adapts`. Tensors that are not finite (NaN / Inf) and entries that are not tensors
are refused. :func:`read_checkpoint_file` reads a file by its content (safetensors, ``torch.load(weights_only=True)``,
or another framework's format through :mod:`backbones.formats`: a TensorFlow checkpoint or its ``.tar.gz``, a
PaddlePaddle ``.pdparams``), never unpickling code, and tells a truncated file from one that is not a checkpoint.
"""
import argparse
import contextlib
import contextvars
import functools
import importlib
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn

from ._errors import CheckpointMismatchError, UnreadableCheckpointError
from ._registry import family_of_module, get_family
from .formats import foreign_kind, read_foreign, to_torch

__all__ = [
    'select_state_dict', 'unwrap_state_dict', 'strip_prefixes', 'rename_keys', 'convert_state_dict',
    'check_state_dict', 'check_finite', 'read_checkpoint_file', 'read_safetensors_header', 'check_safetensors',
    'family_filter_fn', 'caller_adapts', 'classifier_names',
    'CheckpointMismatchError', 'UnreadableCheckpointError',
]

_logger = logging.getLogger(__name__)

Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]

_EMA_KEYS = ('state_dict_ema', 'model_ema')
_RAW_KEYS = ('state_dict', 'model', 'module')
_CONTAINER_KEYS = _EMA_KEYS + _RAW_KEYS
_PREFIXES = ('module.', '_orig_mod.')
_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit on the JSON header


# ---------------------------------------------------------------------------------------------- reading a file

def _file_kind(head: bytes) -> str:
    """'safetensors', 'zip' (torch.save), 'pickle' (legacy torch.save) or 'unknown', from the first bytes."""
    if head[:4] == b'PK\x03\x04':
        return 'zip'
    if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05'):
        return 'pickle'
    if len(head) >= 9 and head[8:9] == b'{' and 2 <= int.from_bytes(head[:8], 'little') <= _MAX_SAFETENSORS_HEADER:
        return 'safetensors'
    return 'unknown'


def _describe(head: bytes) -> str:
    kind = _file_kind(head)
    if kind == 'zip':
        return 'it is a zip archive, as torch.save writes'
    if kind == 'pickle':
        return 'it is a pickle, as legacy torch.save writes'
    return f'it starts with {head[:16]!r}'


def _raises_as_caller_error(reader: Callable) -> Callable:
    """Give a reader an ``error`` keyword: the class its :class:`UnreadableCheckpointError` is raised as (same
    message, chained). Each entry point reports the reader's one line as its own public class --
    :class:`backbones.hub.CorruptWeightsError`, :class:`backbones.convert.ConversionError`,
    :class:`backbones.train.CheckpointError` -- through this one translation, not a wrapper of its own."""
    @functools.wraps(reader)
    def read(*args, error: Type[Exception] = UnreadableCheckpointError, **kwargs):
        try:
            return reader(*args, **kwargs)
        except UnreadableCheckpointError as e:
            if isinstance(e, error):
                raise
            raise error(str(e)) from e
    return read


@_raises_as_caller_error
def read_safetensors_header(path: Union[str, Path]) -> Dict[str, Any]:
    """The JSON header of the safetensors file ``path`` (tensor name -> dtype, shape, data offsets), read without
    the tensors. Raises :class:`UnreadableCheckpointError` (one line naming the file) for a file that is not
    safetensors at all (a torch zip, a text file, ...: "not a safetensors file", whatever makes its header
    unreadable -- bad UTF-8, bad JSON, JSON nested too deep to parse, not an object) and for one shorter than its
    header says ("truncated")."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, 'rb') as f:
        head = f.read(16)
        if _file_kind(head) != 'safetensors':
            what = 'empty (0 bytes)' if size == 0 else _describe(head)
            raise UnreadableCheckpointError(f'{path} is not a safetensors file: {what}')
        n = int.from_bytes(head[:8], 'little')
        if n > size - 8:
            raise UnreadableCheckpointError(
                f'{path} is truncated: its header says {n} header bytes, the file has {size} bytes in all '
                f'(an interrupted download or copy? delete it and fetch it again)')
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except Exception as e:  # noqa: BLE001 - UnicodeDecodeError, JSONDecodeError, RecursionError (deep nesting)
            why = 'nested too deep' if isinstance(e, RecursionError) else str(e).splitlines()[0][:200]
            raise UnreadableCheckpointError(f'{path} is not a safetensors file (unreadable header: {why})') from None
    if not isinstance(header, dict):
        raise UnreadableCheckpointError(f'{path} is not a safetensors file (its header is not a JSON object)')
    return header


@_raises_as_caller_error
def check_safetensors(path: Union[str, Path]) -> None:
    """Raise :class:`UnreadableCheckpointError` unless ``path`` is a complete safetensors file (reads the header:
    :func:`read_safetensors_header`): "truncated" is reserved for a safetensors file shorter than its header says,
    anything else is "not a safetensors file"."""
    path = Path(path)
    header = read_safetensors_header(path)
    size = path.stat().st_size
    with open(path, 'rb') as f:
        n = int.from_bytes(f.read(8), 'little')
    is_offset = lambda v: isinstance(v, int) and not isinstance(v, bool)
    ends = [v['data_offsets'][1] for k, v in header.items() if k != '__metadata__' and isinstance(v, dict)
            and isinstance(v.get('data_offsets'), list) and len(v['data_offsets']) == 2
            and is_offset(v['data_offsets'][1])]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise UnreadableCheckpointError(
            f'{path} is truncated: {size} bytes, the tensors it lists need {expected} '
            f'(an interrupted download or copy? delete it and fetch it again)')


@_raises_as_caller_error
def read_checkpoint_file(path: Union[str, Path], workdir: Union[str, Path, None] = None) -> Any:
    """Read a checkpoint without ever unpickling code: safetensors, ``torch.load(weights_only=True)``, or a format
    of another framework (:mod:`backbones.formats`: a TensorFlow checkpoint -- its folder, prefix or ``.index`` --,
    its ``.tar.gz`` / ``.tar`` release archive, unpacked into a temporary folder in ``workdir``, or a PaddlePaddle
    ``.pdparams``), returned as ``{name: tensor}`` in that framework's names and layouts.

    The format is told by the content, not the file name. Only ``argparse.Namespace`` is allowed beyond tensors and
    plain containers (timm's ``CheckpointSaver`` stores its arguments as one). Raises ``FileNotFoundError`` or
    :class:`UnreadableCheckpointError` (empty, truncated, not a checkpoint, or needing code to unpickle), as the
    class given by ``error=`` if any.
    """
    path = Path(path)
    foreign = foreign_kind(path)
    if foreign is not None:
        return to_torch(read_foreign(path, foreign, workdir=workdir))
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    with path.open('rb') as f:
        head = f.read(16)
    if not head:
        raise UnreadableCheckpointError(f'{path} is empty (0 bytes): not a checkpoint')
    kind = _file_kind(head)
    if kind == 'safetensors':
        check_safetensors(path)
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device='cpu')
        except Exception as e:  # SafetensorError: a header the JSON parser took but the format does not
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise UnreadableCheckpointError(f'{path} is not a safetensors file (its reader: {first})') from None
    if kind == 'unknown':
        suffix = 'safetensors' if path.suffix == '.safetensors' else 'PyTorch or safetensors'
        raise UnreadableCheckpointError(f'{path} is not a {suffix} checkpoint: {_describe(head)}')
    try:  # a file object: torch.load would pick its reader by the name's suffix
        with torch.serialization.safe_globals([argparse.Namespace]), path.open('rb') as f:
            return torch.load(f, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UnreadableCheckpointError(
            f'refusing to load {path}: it holds pickled objects other than tensors and plain containers, and '
            f'loading it would run code (torch.load(weights_only=True) said: {first}). Only load checkpoints '
            f'that hold tensors; if you trust this file, re-save its state dict with torch.save or safetensors '
            f'in a separate step.') from e
    except Exception as e:  # RuntimeError from a truncated zip, EOFError from a cut pickle, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableCheckpointError(
            f'cannot read the PyTorch checkpoint {path} ({first}): the file is truncated or corrupt') from e


def family_filter_fn(arch: str) -> Callable:
    """The ``checkpoint_filter_fn`` of the family that zoo model ``arch`` belongs to."""
    return importlib.import_module(get_family(arch).module).checkpoint_filter_fn


# ---------------------------------------------------------------------------------------------- state dicts

def select_state_dict(checkpoint: Any, ema: str = 'auto', prefer: str = '',
                      what: str = 'the checkpoint') -> Tuple[Dict[str, torch.Tensor], str]:
    """The zoo's one container policy: which weights of a checkpoint to use. Returns ``(state_dict, kind)``.

    A bare state dict is used as it is (kind ``'weights'``). A container -- timm ``CheckpointSaver``'s
    ``{'state_dict', 'state_dict_ema', ...}``, the official codes' ``{'model': ..., 'model_ema': ...}``, mmcls's
    ``{'meta', 'state_dict'}`` -- gives, with ``ema``:

    * ``'auto'``: its EMA weights (``state_dict_ema`` / ``model_ema``, kind ``'ema'``) when it holds them, as timm
      does, else its raw weights (``state_dict`` / ``model`` / ``module``, kind ``'model'``); ``prefer`` names the
      entry a family's official evaluation reads instead (:attr:`backbones._registry.Family.checkpoint_key`), used
      when present in a released container. A training checkpoint (one that holds an ``optimizer``: timm's
      ``CheckpointSaver``, ``tools/train.py``) gives its EMA weights first whatever the family, as timm's
      validation does;
    * ``'yes'``: its EMA weights, or :class:`CheckpointMismatchError` ("``what`` holds no EMA weights");
    * ``'no'``: its raw weights even when it holds EMA weights (EMA weights only when it holds nothing else).

    Containers nest (a container in a container); ``module.`` / ``_orig_mod.`` prefixes (DDP, ``torch.compile``) are
    stripped. Anything that is not a mapping (a bare tensor, a list, a whole pickled model) is refused.
    """
    if ema not in ('auto', 'yes', 'no'):
        raise ValueError(f"ema={ema!r}: expected 'auto', 'yes' or 'no'")
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(
            f'the checkpoint is a {type(checkpoint).__name__}, not a state dict (a mapping of names to tensors) '
            f'or a container holding one')
    order = _RAW_KEYS + _EMA_KEYS if ema == 'no' else _EMA_KEYS + _RAW_KEYS
    if prefer and ema == 'auto' and 'optimizer' not in checkpoint:
        order = (prefer,) + tuple(k for k in order if k != prefer)
    sd, kind = checkpoint, 'weights'
    while isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        for key in order:
            if isinstance(sd.get(key), Mapping):
                sd, kind = sd[key], 'ema' if key in _EMA_KEYS else 'model'
                break
        else:
            raise CheckpointMismatchError(
                f'no tensors found in the checkpoint; top-level keys: {sorted(map(str, sd))[:10]} '
                f'(expected a state dict or one of the containers {list(_CONTAINER_KEYS)})')
    if ema == 'yes' and kind != 'ema':
        raise CheckpointMismatchError(f'{what} holds no EMA weights (state_dict_ema)')
    return strip_prefixes(sd), kind


def strip_prefixes(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """``state_dict`` without the ``module.`` (DistributedDataParallel) / ``_orig_mod.`` (``torch.compile``) key
    prefixes a wrapped model's state dict has."""
    out = {}
    for k, v in state_dict.items():
        k = str(k)
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def unwrap_state_dict(checkpoint: Any, prefer: str = '') -> Dict[str, torch.Tensor]:
    """The tensor dict :func:`select_state_dict` picks (EMA weights first, as timm; ``prefer``: a family's entry)."""
    return select_state_dict(checkpoint, prefer=prefer)[0]


def rename_keys(state_dict: Mapping[str, torch.Tensor], rules: Sequence[Rule], keep: Iterable[str] = ()) -> Dict:
    """Apply every rule (``re.sub``) in order to each key not in ``keep``."""
    keep = set(keep)
    out = {}
    for k, v in state_dict.items():
        if k not in keep:
            for pattern, repl in rules:
                k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def check_finite(state_dict: Mapping[str, Any], what: str = 'checkpoint') -> None:
    """Raise :class:`CheckpointMismatchError` naming the tensors that hold NaN or Inf (a diverged run, a bad file)."""
    bad = [k for k, v in state_dict.items() if isinstance(v, torch.Tensor) and not v.is_meta
           and (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointMismatchError(
            f'{what} holds non-finite values (NaN or Inf) in {len(bad)} tensor(s): {_listing(bad, 4)}; refusing '
            f'to load it (a diverged training run or a corrupt file)')


_ADAPTING = contextvars.ContextVar('backbones_checkpoint_caller_adapts', default=False)


@contextlib.contextmanager
def caller_adapts() -> Iterator[None]:
    """Within this block, checkpoint filters accept any classifier size and any first-conv input channels.

    For callers that rebuild the model to fit the checkpoint or replace its head themselves (``tools/convert.py``,
    :func:`backbones.hub.build_model`, fine-tuning from ``--pretrained-path``); every other key is checked as always.
    """
    token = _ADAPTING.set(True)
    try:
        yield
    finally:
        _ADAPTING.reset(token)


def _listing(keys: List[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f' ... and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def _shape(v: Any) -> Any:
    return tuple(v.shape) if isinstance(v, torch.Tensor) else f'a {type(v).__name__}, not a tensor'


def _names(value: Any) -> List[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _classifier_prefixes(model: nn.Module) -> List[str]:
    return [c + '.' for c in classifier_names(model)]


def _head_classes(state_dict: Mapping[str, Any], prefixes: Sequence[str]) -> Optional[int]:
    for p in prefixes:
        w = state_dict.get(p + 'weight')
        if isinstance(w, torch.Tensor) and w.ndim >= 1:
            return int(w.shape[0])
    return None


def _input_conv_ok(key: str, got: torch.Tensor, want: torch.Tensor, model: nn.Module, adapting: bool) -> bool:
    """Whether the first conv's checkpoint weight ``got`` may load into ``want`` after timm's in_chans adaptation:
    the same shape but for the input channels, and the model built for another channel count than the weights'."""
    if got.ndim != want.ndim or got.ndim < 2 or got.shape[0] != want.shape[0] or got.shape[2:] != want.shape[2:]:
        return False
    if adapting:
        return True
    try:
        module = model.get_submodule(key[:-len('.weight')])
    except AttributeError:
        return False
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    weights_in_chans = (cfg.get('input_size') or (3,))[0]
    groups = getattr(module, 'groups', 1)
    in_channels = getattr(module, 'in_channels', None)
    return in_channels is not None and in_channels != weights_in_chans and got.shape[1] * groups == weights_in_chans


def check_state_dict(
        state_dict: Mapping[str, torch.Tensor],
        model: nn.Module,
        what: str = 'checkpoint',
        ignore_shapes: Sequence[str] = (),
        strict: bool = False,
        header: str = '',
        hint: str = '',
) -> None:
    """The zoo's one fit check: raise :class:`CheckpointMismatchError` unless ``state_dict`` has exactly the model's
    keys and shapes (and finite values). Every loading path runs it, so a checkpoint that does not fit reads the same
    wherever it is loaded: missing, unexpected and mis-shaped keys, the head sizes and what to build instead.

    BN ``num_batches_tracked`` counters are exempt (older checkpoints lack them; torch fills them in). Unless
    ``strict`` (loading into the model as built, as a resume or :func:`backbones.hub.load_checkpoint` does), the first
    conv (``pretrained_cfg['first_conv']`` and the weights under the prefixes in ``ignore_shapes``) may differ in its
    input channels only where timm adapts it, and the classifier may differ in size only where timm drops it (the
    model was built with a ``num_classes`` other than ``pretrained_cfg['num_classes']``) -- see the module docstring;
    inside :func:`caller_adapts` both are left to the caller. ``header`` replaces the first line ("``what`` does not
    fit <model>:"); ``hint`` ends the message.
    """
    expected = model.state_dict()
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    adapting = _ADAPTING.get() and not strict
    heads = _classifier_prefixes(model)
    model_classes = getattr(model, 'num_classes', None)
    weights_classes = cfg.get('num_classes', model_classes)
    timm_drops_head = model_classes != weights_classes and not strict
    ckpt_classes = _head_classes(state_dict, heads)
    is_head = lambda k: any(k.startswith(p) for p in heads)
    head_exempt = adapting or timm_drops_head
    exempt = lambda k: k.endswith('num_batches_tracked') or (head_exempt and is_head(k))
    input_convs = {f'{n}.weight' for n in _names(cfg.get('first_conv'))}
    input_convs |= {k for k in expected if any(k.startswith(p) for p in ignore_shapes) and k.endswith('weight')}
    may_adapt = set() if strict else input_convs

    missing = [k for k in expected if k not in state_dict and not exempt(k)]
    unexpected = [k for k in state_dict if k not in expected and not exempt(k)]
    mismatched, channel_hint = [], ''
    for k, v in state_dict.items():
        if k not in expected or exempt(k):
            continue
        want = expected[k]
        if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(want.shape):
            continue
        if k in may_adapt and isinstance(v, torch.Tensor) and _input_conv_ok(k, v, want, model, adapting):
            continue
        mismatched.append(f'{k} (checkpoint {_shape(v)}, model {tuple(want.shape)})')
        if k in input_convs and isinstance(v, torch.Tensor) and v.ndim == want.ndim >= 2 \
                and v.shape[0] == want.shape[0] and v.shape[2:] == want.shape[2:]:
            channel_hint = (f'  the first conv {k} takes {v.shape[1]} input channel(s) in the checkpoint and '
                            f'{want.shape[1]} in the model: build it with in_chans={v.shape[1]}')
    if missing or unexpected or mismatched:
        name = cfg.get('architecture') or model.__class__.__name__
        lines = [header or f'{what} does not fit {name}:']
        head_only = all(is_head(k) for k in missing + unexpected + [m.split(' ')[0] for m in mismatched])
        if head_only and not head_exempt:
            lines.append('  ' + _head_message(ckpt_classes, model_classes, as_built=strict))
        if missing:
            lines.append(f'  missing keys ({len(missing)}): {_listing(missing)}')
        if unexpected:
            lines.append(f'  unexpected keys ({len(unexpected)}): {_listing(unexpected)}')
        if mismatched:
            lines.append(f'  shape mismatches ({len(mismatched)}): {_listing(mismatched, 4)}')
        if channel_hint:
            lines.append(channel_hint)
        if not head_only:
            lines.append('  expected keys look like: ' + _listing([k for k in expected if not exempt(k)], 4))
        if hint:
            lines.append('  ' + hint)
        raise CheckpointMismatchError('\n'.join(lines))
    check_finite({k: v for k, v in state_dict.items() if k in expected}, what)
    if timm_drops_head and not adapting and ckpt_classes is not None and ckpt_classes == model_classes \
            and isinstance(cfg, dict) and not any(tuple(state_dict[k].shape) != tuple(expected[k].shape)
                                                  for k in state_dict if is_head(k) and k in expected):
        # the checkpoint's head fits the asked-for num_classes: make the config describe these weights, so that
        # timm's load_pretrained (which reads it after this filter) keeps the head instead of dropping it
        _logger.info(f'{what}: its {ckpt_classes}-class classifier fits num_classes={model_classes}; keeping it '
                     f'(pretrained_cfg said {weights_classes} classes)')
        cfg['num_classes'] = model_classes


def classifier_names(model: nn.Module) -> Tuple[str, ...]:
    """The classifier module names of ``pretrained_cfg['classifier']`` (a name or a tuple, e.g. a distilled model's
    two heads; ``head.fc`` when the model has no cfg), main classifier first."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    classifier = cfg.get('classifier', 'head.fc')
    if not classifier:
        return ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _head_message(ckpt_classes: Optional[int], model_classes: Optional[int], as_built: bool = False) -> str:
    if as_built:  # the model is what the run or the caller built: say what differs, not how to rebuild it
        return (f'the checkpoint has a {ckpt_classes}-class classifier, the model {model_classes or 0} classes'
                if ckpt_classes else f'the checkpoint has no classifier, the model a {model_classes}-class one')
    if ckpt_classes is None:
        return (f'the checkpoint has no classifier (a headless export) and the model has a {model_classes}-class '
                f'one: build it with num_classes=0 (no head), or another num_classes for a new head')
    if not model_classes:
        return (f'the checkpoint has a {ckpt_classes}-class classifier and the model none (num_classes=0): build '
                f'it with num_classes={ckpt_classes}')
    return (f'the checkpoint has a {ckpt_classes}-class classifier, the model num_classes={model_classes}: build '
            f'it with num_classes={ckpt_classes} to keep that head (with pretrained_cfg_overlay=dict(file=..., '
            f'num_classes={ckpt_classes}) for a file), or another num_classes for a new head')


def _checkpoint_key(model: nn.Module) -> str:
    """The container entry the official evaluation of ``model``'s family reads (``Family.checkpoint_key``), if any."""
    family = family_of_module(type(model).__module__)
    return family.checkpoint_key if family is not None else ''


def convert_state_dict(
        checkpoint: Mapping,
        model: nn.Module,
        rules: Sequence[Rule],
        family: str,
        first_conv: Optional[str] = None,
) -> Dict[str, torch.Tensor]:
    """Unwrap, rename foreign keys to ours with ``rules`` and verify the result fits ``model``.

    Keys already in our layout pass through untouched, so our own exported checkpoints load as they are. A container
    gives the weights :func:`select_state_dict` picks, the family's ``checkpoint_key`` first.
    """
    sd = unwrap_state_dict(checkpoint, prefer=_checkpoint_key(model))
    sd = rename_keys(sd, rules, keep=model.state_dict().keys())
    check_state_dict(sd, model, what=f'{family} checkpoint', ignore_shapes=(first_conv,) if first_conv else ())
    return sd
