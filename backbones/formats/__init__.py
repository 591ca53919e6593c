"""Checkpoints of other frameworks, read without those frameworks (numpy only), and never by running pickled code.

* :mod:`.tf_bundle` -- TensorFlow checkpoints (``.index`` + ``.data-*`` shards, or their folder);
* :mod:`.archive` -- the checkpoint inside a ``.tar.gz`` / ``.tar`` release archive;
* :mod:`.pdparams` -- PaddlePaddle ``.pdparams`` (a pickle of numpy arrays, read by an allow-list unpickler);
* :mod:`.moat_tf` -- MOAT's official TensorFlow variable names -> the zoo's keys.

:func:`read_checkpoint_file <backbones._checkpoint.read_checkpoint_file>` tells these formats apart by their content
(:func:`foreign_kind`) and reads them through :func:`read_foreign`, so every loading path of the zoo
(``pretrained_cfg_overlay=dict(file=...)``, ``tools/convert.py``, fine-tuning) takes them like a PyTorch file; a
family's ``checkpoint_filter_fn`` then maps the foreign names onto its own. Errors are
:class:`~backbones._checkpoint.UnreadableCheckpointError` subclasses with one line that says what is wrong.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch

__all__ = ['foreign_kind', 'read_foreign', 'to_torch']


def to_torch(obj: Any) -> Any:
    """numpy arrays -> tensors, inside (nested) mappings too; anything else unchanged."""
    if isinstance(obj, Mapping):
        return {k: to_torch(v) for k, v in obj.items()}
    return torch.from_numpy(np.array(obj)) if isinstance(obj, np.ndarray) else obj


def _torch_legacy_pickle(head: bytes) -> bool:
    """``torch.save(..., _use_new_zipfile_serialization=False)`` opens with its magic number as a pickled long."""
    return head[2:4] == b'\x8a\x0a'


def foreign_kind(path: Union[str, Path]) -> Optional[str]:
    """``'tf'`` (a TensorFlow checkpoint: its folder, prefix, ``.index`` or a shard), ``'archive'`` (``.tar.gz`` /
    ``.tar``), ``'pickle'`` (a pickle that is not a PyTorch file, e.g. ``.pdparams``), or ``None`` (a PyTorch /
    safetensors file, or nothing this package reads)."""
    from .archive import is_archive
    from .tf_bundle import find_checkpoint, is_tf_index
    path = Path(path)
    if not path.is_file():
        try:
            find_checkpoint(path)
        except (FileNotFoundError, ValueError):
            return 'tf' if path.is_dir() and any(path.glob('*.index')) else None
        return 'tf'
    with path.open('rb') as f:
        head = f.read(512)
    if is_archive(head):
        return 'archive'
    if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05') and not _torch_legacy_pickle(head):
        return 'pickle'
    if is_tf_index(path):
        return 'tf'
    try:
        find_checkpoint(path)  # a .data-* shard beside its .index
    except (FileNotFoundError, ValueError):
        return None
    return 'tf'


def read_foreign(path: Union[str, Path], kind: Optional[str] = None,
                 workdir: Union[str, Path, None] = None) -> Dict[str, np.ndarray]:
    """``{name: array}`` of a foreign checkpoint (``kind`` as :func:`foreign_kind` says). An archive is unpacked
    into a temporary folder inside ``workdir`` (default: the system's), removed again whatever happens."""
    from .archive import extract_tf_checkpoint
    from .pdparams import read_pdparams
    from .tf_bundle import read_tf_checkpoint
    kind = kind or foreign_kind(path)
    if kind == 'tf':
        return read_tf_checkpoint(path)
    if kind == 'archive':
        with tempfile.TemporaryDirectory(prefix='.unpack-', dir=workdir) as tmp:
            extract_tf_checkpoint(path, tmp)
            return read_tf_checkpoint(tmp)
    if kind == 'pickle':
        return read_pdparams(path)
    raise ValueError(f'{path} is not a checkpoint format of another framework that this package reads')
