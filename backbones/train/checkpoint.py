"""Training checkpoints that lose nothing, written so that a kill at any moment leaves the last good one intact.

A checkpoint is a dict in timm ``CheckpointSaver``'s layout (``epoch``, ``arch``, ``state_dict``, ``state_dict_ema``,
``optimizer``, ``amp_scaler``, ``version``, ``args``, ``metric``, ``saver``), so ``timm.models.load_checkpoint``,
timm's own ``validate.py`` and ``tools/validate.py`` read it, plus what an exact resume needs: ``scheduler``, ``rng``
(python / numpy / torch / CUDA generator states of every rank), ``data_config`` and ``summary`` (the rows of
``summary.csv`` up to its epoch, from which that file is rewritten: it never lists an epoch without a checkpoint).
``args`` is a plain dict and every value is a tensor or a plain container, so it loads with
``torch.load(weights_only=True)``.

Writing: :func:`atomic_save` writes a temporary file next to the target, fsyncs it and ``os.replace``\\ s it into
place (a temporary left by a killed process is removed on the next start: ``backbones._files``).
:class:`TrainCheckpointSaver` is timm's ``CheckpointSaver`` (ranked history of ``--checkpoint-hist`` files,
``last.pth.tar``, ``model_best.pth.tar``, bookkeeping restored on resume) with every write and every copy done that
way: timm unlinks ``last.pth.tar`` before replacing it, which a kill at the wrong moment turns into no checkpoint.
:func:`export_for_hf` writes the best weights as a ``save_for_hf`` folder (``config.json`` + ``model.safetensors``).
"""
import contextlib
import csv
import io
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from timm.utils import CheckpointSaver

from .._checkpoint import (
    CheckpointMismatchError,
    check_state_dict,
    read_checkpoint_file,
    strip_prefixes,
)
from .._files import temp_name
from .errors import CheckpointError, one_line

__all__ = [
    'atomic_save', 'atomic_write_text', 'TrainCheckpointSaver', 'capture_rng_state', 'restore_rng_state',
    'read_checkpoint', 'load_training_checkpoint', 'load_model_state', 'export_for_hf', 'plain_args', 'summary_row',
    'write_summary', 'rewrite_summary', 'CHECKPOINT_VERSION',
]

_logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2  # timm: version >= 2 means ``epoch`` is the index of the last completed epoch


@contextlib.contextmanager
def _replacing(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` (``os.replace``, atomic),
    otherwise it is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(obj: Any, path) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same directory and ``os.replace``: readers (and a
    resume after a kill) see either the old file or the complete new one, never a partial one."""
    with _replacing(path) as tmp, open(tmp, 'wb') as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path, text: str) -> None:
    with _replacing(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path, data: bytes) -> None:
    with _replacing(path) as tmp:
        tmp.write_bytes(data)


class TrainCheckpointSaver(CheckpointSaver):
    """timm's ``CheckpointSaver`` whose checkpoint dict comes from ``state_fn(epoch, metric)`` and whose writes are
    atomic (temporary file + ``os.replace``; copies are hard links or file copies made under a temporary name and
    renamed into place)."""

    def __init__(self, state_fn: Callable[[int, Optional[float]], Dict[str, Any]], checkpoint_dir: str,
                 max_history: int = 10, decreasing: bool = False):
        super().__init__(model=None, optimizer=None, args=None, checkpoint_dir=checkpoint_dir,
                         recovery_dir=checkpoint_dir, decreasing=decreasing, max_history=max(1, max_history))
        self.state_fn = state_fn
        self.last_epoch: Optional[int] = None  # the epoch last.pth.tar holds (the last good one)
        self._saving: Optional[int] = None
        # timm logs the whole ranked history after every save; the trainer prints one line per epoch instead
        logging.getLogger('timm.utils.checkpoint_saver').setLevel(logging.WARNING)

    def _save(self, save_path, epoch, metric=None):
        state = self.state_fn(epoch, metric)
        state['saver'] = self.state_dict(epoch, metric)
        atomic_save(state, save_path)
        self._saving = epoch

    def _replace(self, src, dst):
        os.replace(src, dst)  # atomic on POSIX; never unlink dst first
        if Path(dst).name == 'last' + self.extension:
            self.last_epoch = self._saving

    def _duplicate(self, src, dst):
        tmp = temp_name(Path(dst))
        try:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copy2(src, tmp)
            os.replace(tmp, dst)
        finally:
            if tmp.exists():
                tmp.unlink()


# ---------------------------------------------------------------------------------------------------- RNG states
def capture_rng_state() -> Dict[str, Any]:
    """Python, numpy, torch CPU and CUDA generator states, as tensors and plain containers (weights_only-safe)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        'python': random.getstate(),
        'numpy': {
            'bit_generator': np_state['bit_generator'],
            'key': torch.from_numpy(np.asarray(np_state['state']['key']).astype(np.int64)),
            'pos': int(np_state['state']['pos']),
            'has_gauss': int(np_state['has_gauss']),
            'gauss': float(np_state['gauss']),
        },
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    v, internal, gauss = state['python']
    random.setstate((v, tuple(internal), gauss))
    n = state['numpy']
    np.random.set_state({
        'bit_generator': n['bit_generator'],
        'state': {'key': n['key'].numpy().astype(np.uint32), 'pos': n['pos']},
        'has_gauss': n['has_gauss'], 'gauss': n['gauss'],
    })
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        cuda = list(state['cuda'])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            _logger.warning(f'checkpoint has CUDA RNG states of {len(cuda)} devices, this machine has '
                            f'{torch.cuda.device_count()}: CUDA RNG not restored')


# ---------------------------------------------------------------------------------------------------- reading
def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def plain_args(args) -> Dict[str, Any]:
    """``vars(args)`` with every value a plain Python value (what a checkpoint stores as ``args``)."""
    return {k: _plain(v) for k, v in vars(args).items()}


def read_checkpoint(path) -> Any:
    """``path`` read by the zoo's reader (:func:`~backbones._checkpoint.read_checkpoint_file`: never unpickling
    code), a missing or unreadable file as one :class:`CheckpointError` line: training and validation read every
    checkpoint through it."""
    try:
        return read_checkpoint_file(path, error=CheckpointError)
    except FileNotFoundError:
        raise CheckpointError(f'checkpoint not found: {path}') from None


def load_training_checkpoint(path, arch: Optional[str] = None) -> Dict[str, Any]:
    """Read a training checkpoint (:func:`read_checkpoint`) and check it is one of model ``arch``.

    Raises :class:`CheckpointError` (one line) for an unreadable file, a file that is not a training checkpoint, or a
    checkpoint of another model."""
    ck = read_checkpoint(path)
    if not isinstance(ck, Mapping) or not isinstance(ck.get('state_dict'), Mapping):
        raise CheckpointError(
            f'{path} is not a training checkpoint (no state_dict/optimizer/epoch); to start from its weights use '
            f'--initial-checkpoint (same model) or --pretrained-path (fine-tuning)')
    ck_arch = ck.get('arch')
    args = ck.get('args')
    if ck_arch is None and args is not None:
        ck_arch = args.get('model') if isinstance(args, Mapping) else getattr(args, 'model', None)
    if arch is not None and ck_arch is not None and ck_arch != arch:
        raise CheckpointError(f"cannot resume from {path}: it is a checkpoint of model '{ck_arch}', "
                              f"this run trains '{arch}'")
    return dict(ck)


def load_model_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, what: str = 'weights'):
    """Load ``state_dict`` strictly into ``model`` as built for this run; a mismatch or a non-finite value is a
    one-line :class:`CheckpointError` (the zoo's fit check, :func:`~backbones._checkpoint.check_state_dict`)."""
    sd = strip_prefixes(state_dict)
    name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
    try:
        check_state_dict(sd, model, what=f'the {what} in {source}', strict=True,
                         header=f'the {what} in {source} do not fit {name} as built for this run:',
                         hint='(other --model-kwargs / --num-classes?)')
    except CheckpointMismatchError as e:
        raise CheckpointError(one_line(e)) from None
    model.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------------------- export
def export_for_hf(model: nn.Module, directory, data_config: Optional[Dict[str, Any]] = None,
                  label_names: Optional[Sequence[str]] = None, model_args: Optional[Dict[str, Any]] = None,
                  extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model`` as a timm ``save_for_hf`` folder (``config.json`` + ``model.safetensors``) at ``directory``.

    The folder is written to a temporary sibling first; each file is then moved into place with ``os.replace``, so
    every file in ``directory`` is always complete. ``data_config`` (the eval transforms the weights were validated
    with) goes into the exported ``pretrained_cfg``, so ``timm.create_model('local-dir:<directory>',
    pretrained=True)`` + ``resolve_data_config`` reproduce the evaluation; ``extra`` is added to ``config.json``."""
    from ..hub import save_for_hf  # timm's, with a config.json that transformers loads too
    if any(not t.is_contiguous() for t in model.state_dict().values()):
        # a channels_last model (--channels-last): safetensors stores only contiguous tensors
        import copy
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    model_config: Dict[str, Any] = {}
    if label_names:
        model_config['label_names'] = list(label_names)
    if extra:
        model_config.update(extra)
    tmp = temp_name(directory)
    try:
        tmp.mkdir()
        dc = None
        if data_config:
            dc = {k: data_config[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
                  if data_config.get(k) is not None}
        save_for_hf(model, tmp, model_config=model_config, model_args=model_args, safe_serialization=True,
                    data_config=dc)
        directory.mkdir(exist_ok=True)
        for name in ('model.safetensors', 'config.json'):
            os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def summary_row(epoch: int, train_metrics: Mapping[str, float], eval_metrics: Mapping[str, float],
                lr: Optional[float] = None) -> Dict[str, Any]:
    """One ``summary.csv`` row, with timm ``update_summary``'s column names (``train_*``, ``eval_*``, ``lr``)."""
    row: Dict[str, Any] = {'epoch': epoch}
    row.update({f'train_{k}': v for k, v in train_metrics.items()})
    row.update({f'eval_{k}': v for k, v in (eval_metrics or {}).items()})
    if lr is not None:
        row['lr'] = lr
    return row


def write_summary(path, rows: Sequence[Mapping[str, Any]], fields: Optional[Sequence[str]] = None) -> None:
    """Write ``summary.csv`` (atomically) from ``rows``: one header (``fields``, or the union of the rows' columns in
    order of appearance: an epoch without validation leaves its ``eval_*`` cells empty instead of shifting the
    columns); no rows, an empty file."""
    if fields is None:
        fields = []
        for r in rows:
            fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator='\r\n')
    if rows:
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def rewrite_summary(path, keep_epochs_below: int) -> List[Dict[str, str]]:
    """Keep the rows of ``summary.csv`` with ``epoch < keep_epochs_below`` (atomically); returns the kept rows."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline='') as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = [r for r in reader if r.get('epoch') not in (None, '') and int(r['epoch']) < keep_epochs_below]
    write_summary(path, rows, fields)
    return rows
