"""Official checkpoint -> a timm ``save_for_hf`` folder (``config.json`` + ``model.safetensors``).

:func:`convert_checkpoint` reads a released checkpoint in the container it ships in (``{'model': ...}``,
``{'state_dict': ...}``, ``{'state_dict_ema': ...}``, mmcls ``{'meta': ..., 'state_dict': ...}``, a bare state
dict, or a ``.safetensors`` file; or another framework's file read by :mod:`backbones.formats`: a TensorFlow
checkpoint -- a ``.tar.gz`` release archive, its folder, its ``.index`` -- or a PaddlePaddle ``.pdparams``), maps
it onto the zoo layout with the family's ``checkpoint_filter_fn``, loads it STRICTLY into the zoo model and writes the
folder that ``timm.create_model('local-dir:<dir>', pretrained=True)`` (or ``hf-hub:`` after a push) loads.

Safety: pickles are only ever read with ``torch.load(weights_only=True)``, so a file that needs code to unpickle is
refused, never run. The head size and input channels are the checkpoint's: nothing is dropped or adapted. The folder
is written into a temporary sibling and renamed into place at the end: a failure (Ctrl-C included) leaves nothing
half-written and no temporary behind, and ``overwrite=True`` only ever replaces a folder that holds nothing but an
earlier conversion's two files.
"""
from __future__ import annotations

import difflib
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ._checkpoint import (
    CheckpointMismatchError,
    caller_adapts,
    classifier_names,
    family_filter_fn,
    read_checkpoint_file,
    unwrap_state_dict,
)
from ._files import remove_stale_temps, temp_name
from ._registry import get_family, list_models
from .formats import foreign_kind
from .formats.tf_bundle import find_checkpoint

__all__ = ['convert_checkpoint', 'load_checkpoint_file', 'ConversionError', 'CheckpointMismatchError']

_logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


class ConversionError(RuntimeError):
    """The checkpoint file cannot be read safely, or the converted weights cannot be written."""


# ---------------------------------------------------------------------------------------------- reading the file

def load_checkpoint_file(path: PathLike) -> Mapping[str, Any]:
    """Read a checkpoint without ever unpickling code (see :func:`backbones._checkpoint.read_checkpoint_file`)."""
    return read_checkpoint_file(path, error=ConversionError)


# ---------------------------------------------------------------------------------------------- the model

def _check_model_name(model_name: str) -> str:
    arch = model_name.split('.')[0]
    names = list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; zoo models: {', '.join(names)}"
        raise KeyError(f"unknown zoo model '{model_name}'{hint}")
    return arch


def _classifier(model) -> Optional[str]:
    names = classifier_names(model)
    return names[0] if names else None


def _build(model_name: str, kwargs: Dict[str, Any]):
    import timm
    return timm.create_model(model_name, pretrained=False, device='meta', **kwargs)


def _head_classes(model, sd) -> int:
    classifier = _classifier(model)
    w = sd.get(f'{classifier}.weight') if classifier else None
    return int(w.shape[0]) if w is not None else 0


def _in_chans(model, sd) -> Optional[Tuple[int, int]]:
    """``(checkpoint's, model's)`` input channels of the first conv, or None if it has none."""
    first = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv')
    key = f'{first}.weight' if isinstance(first, str) else None
    if key is None or key not in sd or sd[key].ndim < 2:
        return None
    return int(sd[key].shape[1]), int(model.state_dict()[key].shape[1])


def _convert(model_name, arch, checkpoint, path, model_kwargs, num_classes):
    """Our model holding the converted weights, loaded strictly. The head size and the input channels are the
    checkpoint's (a conversion loses nothing); a ``num_classes`` / ``in_chans`` that disagrees is an error."""
    filter_fn = family_filter_fn(arch)
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    model = _build(model_name, kwargs)
    try:
        with caller_adapts():  # the head size and input channels are settled below, from the checkpoint
            sd = filter_fn(checkpoint, model)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f'{path} is not a {model_name} checkpoint: {e}') from e
    rebuild = {}
    ckpt_classes = _head_classes(model, sd)
    if ckpt_classes != model.num_classes:
        if 'num_classes' in kwargs:
            raise CheckpointMismatchError(
                f"{path}: the checkpoint's classifier has {ckpt_classes} classes, num_classes={kwargs['num_classes']} "
                f'was asked for (a conversion keeps the trained head: drop --num-classes, and re-head at load time '
                f"with timm.create_model('local-dir:<out>', pretrained=True, num_classes=N))")
        _logger.info('%s: the checkpoint has a %d-class classifier; building %s with num_classes=%d',
                     path, ckpt_classes, model_name, ckpt_classes)
        rebuild['num_classes'] = ckpt_classes  # a fine-tuned (or headless, 0) checkpoint
    chans = _in_chans(model, sd)
    if chans is not None and chans[0] != chans[1]:
        if 'in_chans' in kwargs:
            raise CheckpointMismatchError(
                f"{path}: the checkpoint's first conv takes {chans[0]} input channels, in_chans={kwargs['in_chans']} "
                f'was asked for (a conversion keeps the trained weights: drop in_chans, and adapt at load time with '
                f"timm.create_model('local-dir:<out>', pretrained=True, in_chans=N))")
        _logger.info('%s: the checkpoint takes %d input channels; building %s with in_chans=%d',
                     path, chans[0], model_name, chans[0])
        rebuild['in_chans'] = chans[0]
    if rebuild:
        kwargs.update(rebuild)
        model = _build(model_name, kwargs)
    sd = filter_fn(sd, model)  # every key, the head's included, fits this model exactly now
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
        raise CheckpointMismatchError(f'{path} does not load strictly into {model_name}: {e}') from e
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


_WRITTEN = ('config.json', 'model.safetensors')  # what a conversion writes: all that --overwrite may replace


def _check_out_dir(out_dir: Path, checkpoint: Path, overwrite: bool) -> None:
    """Refuse an ``out_dir`` whose replacement could destroy anything this tool did not write."""
    if out_dir.is_symlink():
        raise FileExistsError(f'--out {out_dir} is a symbolic link: give the folder itself')
    if out_dir.exists() and not out_dir.is_dir():
        same = out_dir.resolve() == checkpoint.resolve()
        raise FileExistsError(f'--out {out_dir} is {"the --checkpoint file" if same else "a file"}, not a folder: '
                              f'refusing to replace it; give a new folder')
    if out_dir.resolve() in checkpoint.resolve().parents:
        raise FileExistsError(f'--checkpoint {checkpoint} is inside --out {out_dir}: writing there would replace '
                              f'it; give another --out')
    if not out_dir.exists():
        return
    if not overwrite:
        raise FileExistsError(f'{out_dir} already exists; pass overwrite=True (--overwrite) to replace it')
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in _WRITTEN)
    if others:
        more = f' and {len(others) - 5} more' if len(others) > 5 else ''
        raise FileExistsError(
            f'{out_dir} holds files a conversion does not write ({", ".join(others[:5])}{more}): --overwrite only '
            f'replaces a folder of {" + ".join(_WRITTEN)}; give another --out')


def _write_atomically(model, out_dir: Path, overwrite: bool, model_config: dict) -> None:
    """Write the folder as a temporary sibling and swap it into place; on any failure (Ctrl-C included) the
    temporary goes, the previous folder stays, and the parents this call created are removed again."""
    from .hub import save_for_hf  # timm's, with a config.json that transformers loads too
    created = [p for p in out_dir.parents if not p.exists()]  # deepest first
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir.parent, out_dir.name)  # of an earlier conversion that was killed
    tmp, old = temp_name(out_dir), None
    try:
        tmp.mkdir()
        save_for_hf(model, str(tmp), model_config=model_config, safe_serialization=True)
        if out_dir.exists() or out_dir.is_symlink():
            if not overwrite:
                raise FileExistsError(f'{out_dir} appeared while converting; not replacing it (use overwrite)')
            old = temp_name(out_dir, 'old')
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out_dir.exists():
            os.replace(old, out_dir)  # put the previous folder back
            old = None
        for parent in created:
            try:
                parent.rmdir()
            except OSError:
                pass
        raise
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


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
            ``.safetensors``, in any of the usual containers; or a TensorFlow checkpoint (its ``.tar.gz`` / ``.tar``
            archive, folder, prefix or ``.index``) or a PaddlePaddle ``.pdparams`` (:mod:`backbones.formats`).
        out_dir: the folder to write (``config.json`` + ``model.safetensors``).
        model_kwargs: extra ``create_model`` kwargs (recorded in ``config.json``'s ``model_args`` so ``local-dir:``
            and ``hf-hub:`` rebuild the same architecture).
        num_classes: classifier size; default: the checkpoint's (so a fine-tuned checkpoint converts as it is).
        overwrite: replace an existing ``out_dir`` (only once the new folder is complete). Only a folder holding
            nothing but what a conversion writes is replaced: a file, a symbolic link, the checkpoint's own folder or
            a folder with other files is refused.
        push: a Hub repo id: push the converted model with :func:`backbones.hub.push`.
        push_kwargs: extra keyword arguments of :func:`backbones.hub.push`.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        KeyError: unknown model name (close matches are listed).
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False, or may not be replaced (see ``overwrite``).
        CheckpointMismatchError: the checkpoint is of another family / variant, does not load strictly, holds
            non-finite values, or disagrees with ``num_classes`` / ``in_chans`` in ``model_kwargs``.
        ConversionError: the file is truncated / corrupt / not a checkpoint, or needs code to unpickle.
    """
    arch = _check_model_name(model_name)
    path = Path(checkpoint_path)
    out_dir = Path(out_dir)
    if not path.is_file() and foreign_kind(path) is None:
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    _check_out_dir(out_dir, path, overwrite)
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f'{path} holds a {type(checkpoint).__name__}, not a state dict or a dict container')
    try:
        checkpoint = unwrap_state_dict(checkpoint, prefer=get_family(arch).checkpoint_key)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f'{path}: {e}') from e
    checkpoint = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    model, kwargs = _convert(model_name, arch, checkpoint, path, model_kwargs, num_classes)

    from .version import __version__
    if path.is_file():
        digest = _sha256(path)
    else:  # a TensorFlow checkpoint's folder or prefix: its index (which holds every tensor's checksum)
        prefix = find_checkpoint(path)
        digest = _sha256(prefix.with_name(prefix.name + '.index'))
    model_config = dict(converted_from=dict(file=path.name, sha256=digest, backbones_version=__version__))
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
