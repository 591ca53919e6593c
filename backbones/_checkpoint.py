"""Checkpoint conversion shared by every family's ``checkpoint_filter_fn``.

A family describes how a foreign layout (official code, timm) maps onto ours as an ordered list of
``(regex, replacement)`` rules; :func:`convert_state_dict` unwraps the usual containers, renames every key that is
not already ours, and checks the result against the model, raising a ``ValueError`` that lists what is missing or
unexpected instead of letting ``load_state_dict`` fail later with a bare key dump.
"""
import argparse
import importlib
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = [
    'unwrap_state_dict', 'rename_keys', 'convert_state_dict', 'check_state_dict', 'read_checkpoint_file',
    'family_filter_fn', 'classifier_names', 'CheckpointMismatchError', 'UnreadableCheckpointError',
]

Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]

_CONTAINER_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model', 'module')
_PREFIXES = ('module.', '_orig_mod.')


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model: wrong family, wrong variant, or missing keys."""


class UnreadableCheckpointError(ValueError):
    """The checkpoint file is truncated / corrupt, or would need to unpickle code."""


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian u64 header length followed by a JSON object."""
    with path.open('rb') as f:
        head = f.read(9)
    return path.suffix == '.safetensors' or (len(head) == 9 and head[8:9] == b'{'
                                             and 2 <= int.from_bytes(head[:8], 'little') < 1 << 30)


def read_checkpoint_file(path: Union[str, Path]) -> Mapping[str, Any]:
    """Read a checkpoint without ever unpickling code: safetensors, or ``torch.load(weights_only=True)``.

    Only ``argparse.Namespace`` is allowed beyond tensors and plain containers (timm's ``CheckpointSaver``, used by
    tools/train.py, stores its arguments as one).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if _is_safetensors(path):
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device='cpu')
        except Exception as e:  # SafetensorError, OSError, ... (truncated, corrupt header)
            raise UnreadableCheckpointError(
                f'cannot read the safetensors checkpoint {path}: {e} (the file is truncated or corrupt; '
                f'download it again)') from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UnreadableCheckpointError(
            f'refusing to load {path}: it holds pickled objects other than tensors and plain containers, and '
            f'loading it would run code (torch.load(weights_only=True) said: {first}). Only load checkpoints '
            f'that hold tensors; if you trust this file, re-save its state dict with torch.save or safetensors '
            f'in a separate step.') from e
    except Exception as e:  # RuntimeError from a truncated zip, EOFError, ... (a corrupt file)
        raise UnreadableCheckpointError(
            f'cannot read the checkpoint {path}: {type(e).__name__}: {e} (the file is truncated, corrupt, or not '
            f'a PyTorch / safetensors checkpoint)') from e


def family_filter_fn(arch: str) -> Callable:
    """The ``checkpoint_filter_fn`` of the family that zoo model ``arch`` belongs to."""
    from ._registry import get_family
    return importlib.import_module(get_family(arch).module).checkpoint_filter_fn


def unwrap_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """Return the tensor dict inside ``{'state_dict_ema'|'model_ema'|'state_dict'|'model': ...}`` containers.

    EMA weights are preferred when present, as timm does. ``module.`` / ``_orig_mod.`` prefixes are stripped.
    """
    sd = checkpoint
    while isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        for key in _CONTAINER_KEYS:
            if isinstance(sd.get(key), Mapping):
                sd = sd[key]
                break
        else:
            raise CheckpointMismatchError(
                f'no tensors found in the checkpoint; top-level keys: {sorted(sd)[:10]} '
                f'(expected a state dict or one of the containers {list(_CONTAINER_KEYS)})')
    out = {}
    for k, v in sd.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


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


def _listing(keys: List[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f' ... and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def check_state_dict(
        state_dict: Mapping[str, torch.Tensor],
        model: nn.Module,
        what: str = 'checkpoint',
        ignore_shapes: Sequence[str] = (),
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state_dict`` has exactly the model's keys and shapes.

    Classifier keys are exempt (timm drops or re-creates them when ``num_classes`` differs), so are BN
    ``num_batches_tracked`` counters (older checkpoints lack them; torch fills them in), and shapes of the keys under
    the prefixes in ``ignore_shapes`` (the first conv, which timm adapts to ``in_chans``).
    """
    expected = model.state_dict()
    classifiers = tuple(c + '.' for c in classifier_names(model))
    exempt = lambda k: k.startswith(classifiers) or k.endswith('num_batches_tracked')
    missing = [k for k in expected if k not in state_dict and not exempt(k)]
    unexpected = [k for k in state_dict if k not in expected and not exempt(k)]
    mismatched = [
        f'{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}'
        for k in state_dict if k in expected and not exempt(k)
        and not any(k.startswith(p) for p in ignore_shapes)
        and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        name = getattr(model, 'pretrained_cfg', {}).get('architecture') or model.__class__.__name__
        lines = [f'{what} does not fit {name}:']
        if missing:
            lines.append(f'  missing keys ({len(missing)}): {_listing(missing)}')
        if unexpected:
            lines.append(f'  unexpected keys ({len(unexpected)}): {_listing(unexpected)}')
        if mismatched:
            lines.append(f'  shape mismatches ({len(mismatched)}): {_listing(mismatched, 4)}')
        lines.append('  expected keys look like: ' + _listing([k for k in expected if not exempt(k)], 4))
        raise CheckpointMismatchError('\n'.join(lines))


def classifier_names(model: nn.Module) -> Tuple[str, ...]:
    """The classifier module names of ``pretrained_cfg['classifier']`` (a name or a tuple, e.g. a distilled model's
    two heads; ``head.fc`` when the model has no cfg), main classifier first."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    classifier = cfg.get('classifier', 'head.fc')
    if not classifier:
        return ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def convert_state_dict(
        checkpoint: Mapping,
        model: nn.Module,
        rules: Sequence[Rule],
        family: str,
        first_conv: Optional[str] = None,
) -> Dict[str, torch.Tensor]:
    """Unwrap, rename foreign keys to ours with ``rules`` and verify the result fits ``model``.

    Keys already in our layout pass through untouched, so our own exported checkpoints load as they are.
    """
    sd = unwrap_state_dict(checkpoint)
    sd = rename_keys(sd, rules, keep=model.state_dict().keys())
    check_state_dict(sd, model, what=f'{family} checkpoint', ignore_shapes=(first_conv,) if first_conv else ())
    return sd
