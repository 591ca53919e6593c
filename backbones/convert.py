"""Official checkpoint -> a timm ``save_for_hf`` folder (``config.json`` + ``model.safetensors``).

:func:`convert_checkpoint` reads a released checkpoint in the container it ships in (``{'model': ...}``,
``{'state_dict': ...}``, ``{'state_dict_ema': ...}``, mmcls ``{'meta': ..., 'state_dict': ...}``, a bare state
dict, or a ``.safetensors`` file), maps it onto the zoo layout with the family's ``checkpoint_filter_fn``, loads it
STRICTLY into the zoo model and writes the folder that ``timm.create_model('local-dir:<dir>', pretrained=True)``
(or ``hf-hub:`` after a push) loads.

Safety: pickles are only ever read with ``torch.load(weights_only=True)``, so a file that needs code to unpickle is
refused, never run. The folder is written into a temporary sibling and renamed into place at the end: a failure
leaves nothing half-written, and an existing folder is only replaced with ``overwrite=True``.
"""
from __future__ import annotations

import difflib
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from ._checkpoint import (
    CheckpointMismatchError,
    UnreadableCheckpointError,
    family_filter_fn,
    read_checkpoint_file,
    unwrap_state_dict,
)

__all__ = ['convert_checkpoint', 'load_checkpoint_file', 'ConversionError', 'CheckpointMismatchError']

_logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


class ConversionError(RuntimeError):
    """The checkpoint file cannot be read safely, or the converted weights cannot be written."""


# ---------------------------------------------------------------------------------------------- reading the file

def load_checkpoint_file(path: PathLike) -> Mapping[str, Any]:
    """Read a checkpoint without ever unpickling code (see :func:`backbones._checkpoint.read_checkpoint_file`)."""
    try:
        return read_checkpoint_file(path)
    except UnreadableCheckpointError as e:
        raise ConversionError(str(e)) from e


# ---------------------------------------------------------------------------------------------- the model

def _check_model_name(model_name: str) -> str:
    import backbones
    arch = model_name.split('.')[0]
    names = backbones.list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; zoo models: {', '.join(names)}"
        raise KeyError(f"unknown zoo model '{model_name}'{hint}")
    return arch


def _classifier(model) -> Optional[str]:
    return (getattr(model, 'pretrained_cfg', None) or {}).get('classifier', 'head.fc') or None


def _build(model_name: str, kwargs: Dict[str, Any]):
    import timm
    return timm.create_model(model_name, pretrained=False, device='meta', **kwargs)


def _convert(model_name, arch, checkpoint, path, model_kwargs, num_classes):
    """Our model holding the converted weights, loaded strictly (num_classes inferred unless given)."""
    filter_fn = family_filter_fn(arch)
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    model = _build(model_name, kwargs)
    try:
        sd = filter_fn(checkpoint, model)  # classifier keys are exempt from its check, so any head size passes
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f'{path} is not a {model_name} checkpoint: {e}') from e
    classifier = _classifier(model)
    ckpt_classes = sd[f'{classifier}.weight'].shape[0] if classifier and f'{classifier}.weight' in sd else 0
    if 'num_classes' not in kwargs and ckpt_classes != model.num_classes:
        _logger.info('%s: the checkpoint has a %d-class classifier; building %s with num_classes=%d',
                     path, ckpt_classes, model_name, ckpt_classes)
        kwargs['num_classes'] = ckpt_classes  # a fine-tuned (or headless, 0) checkpoint
        model = _build(model_name, kwargs)
        sd = filter_fn(sd, model)
    # num_batches_tracked counters are optional in checkpoints (older BN has none): start them at 0
    for k, v in model.state_dict().items():
        if k.endswith('num_batches_tracked') and k not in sd:
            sd[k] = torch.zeros((), dtype=v.dtype)
    # assign (no copy) into the meta-built model; the weights keep the model's dtypes (fp16 checkpoints -> fp32)
    expected = model.state_dict()
    sd = {k: v.to(expected[k].dtype) if k in expected and v.dtype != expected[k].dtype else v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        hint = ''
        if 'num_classes' in kwargs and ckpt_classes != kwargs['num_classes']:
            hint = (f" (the checkpoint's classifier has {ckpt_classes} classes, num_classes={kwargs['num_classes']} "
                    f'was asked for)')
        raise CheckpointMismatchError(f'{path} does not load strictly into {model_name}{hint}: {e}') from e
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        # a non-persistent buffer is not in the state dict: build the slow, fully-initialised way
        import timm
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        model.load_state_dict(sd, strict=True)
    _own_storage(model)
    return model.eval(), kwargs


def _own_storage(model) -> None:
    """Give every tensor its own contiguous storage (safetensors refuses shared or strided tensors)."""
    seen = set()
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen or not t.is_contiguous() or t.storage_offset() or t.untyped_storage().nbytes() != t.nbytes:
                t.data = t.data.clone(memory_format=torch.contiguous_format)
            seen.add(t.untyped_storage().data_ptr())


# ---------------------------------------------------------------------------------------------- writing

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open('rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _write_atomically(model, out_dir: Path, overwrite: bool, model_config: dict) -> None:
    from .hub import save_for_hf
    created = []  # parents we create, removed again on failure
    for parent in reversed(out_dir.parents):
        if not parent.exists():
            created.append(parent)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.tmp-', dir=out_dir.parent))
    old = None
    try:
        save_for_hf(model, str(tmp), model_config=model_config, safe_serialization=True)
        if out_dir.exists() or out_dir.is_symlink():
            if not overwrite:
                raise FileExistsError(f'{out_dir} appeared while converting; not replacing it (use overwrite)')
            old = out_dir.with_name(f'.{out_dir.name}.old-{os.getpid()}')
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out_dir.exists():
            os.replace(old, out_dir)  # put the previous folder back
            old = None
        for parent in reversed(created):
            try:
                parent.rmdir()
            except OSError:
                pass
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_checkpoint(
        model_name: str,
        checkpoint_path: PathLike,
        out_dir: PathLike,
        model_kwargs: Optional[Dict[str, Any]] = None,
        num_classes: Optional[int] = None,
        overwrite: bool = False,
        push: Optional[str] = None,
        push_kwargs: Optional[Dict[str, Any]] = None,
) -> Path:
    """Convert an official checkpoint of zoo model ``model_name`` into a ``save_for_hf`` folder ``out_dir``.

    Args:
        model_name: zoo model name, optionally with a pretrained tag (``'sknet50.ra_in1k'``) whose preprocessing
            config goes into ``config.json``.
        checkpoint_path: ``.pth`` / ``.pt`` / ``.bin`` (read with ``torch.load(weights_only=True)``) or
            ``.safetensors``; any of the usual containers.
        out_dir: the folder to write (``config.json`` + ``model.safetensors``).
        model_kwargs: extra ``create_model`` kwargs (recorded in ``config.json``'s ``model_args`` so ``local-dir:``
            and ``hf-hub:`` rebuild the same architecture).
        num_classes: classifier size; default: the checkpoint's (so a fine-tuned checkpoint converts as it is).
        overwrite: replace an existing ``out_dir`` (only once the new folder is complete).
        push: a Hub repo id: push the converted model with :func:`backbones.hub.push`.
        push_kwargs: extra keyword arguments of :func:`backbones.hub.push`.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        KeyError: unknown model name (close matches are listed).
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        CheckpointMismatchError: the checkpoint is of another family / variant, or does not load strictly.
        ConversionError: the file is truncated / corrupt, or needs code to unpickle.
    """
    arch = _check_model_name(model_name)
    path = Path(checkpoint_path)
    out_dir = Path(out_dir)
    if (out_dir.exists() or out_dir.is_symlink()) and not overwrite:
        raise FileExistsError(f'{out_dir} already exists; pass overwrite=True (--overwrite) to replace it')
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f'{path} holds a {type(checkpoint).__name__}, not a state dict or a dict container')
    try:
        checkpoint = unwrap_state_dict(checkpoint)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f'{path}: {e}') from e
    checkpoint = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    model, kwargs = _convert(model_name, arch, checkpoint, path, model_kwargs, num_classes)

    from .version import __version__
    model_config = dict(converted_from=dict(file=path.name, sha256=_sha256(path), backbones_version=__version__))
    _write_atomically(model, out_dir, overwrite, model_config)
    _logger.info('wrote %s (%s, num_classes=%d)', out_dir, model_name, model.num_classes)

    if push:
        try:
            from . import hub
        except ImportError as e:
            raise ConversionError(f'--push needs backbones.hub, which cannot be imported: {e}') from e
        # the model as converted; the checkpoint (re-read through the same filter) names the weights in the card
        hub.push(model, push, **dict(dict(checkpoint=str(path)), **(push_kwargs or {})))
    return out_dir
