"""Take a checkpoint out of a ``.tar.gz`` / ``.tar`` release archive, and nothing else.

Only regular files named like TensorFlow checkpoint parts (``*.index``, ``*.data-NNNNN-of-NNNNN``, the ``checkpoint``
state file) are written, each under its own base name into a folder the caller owns, in one streaming pass (a 2 GB
archive is decompressed once). An archive with a member that would land outside its own root (an absolute path, a
``..`` component) is refused as a whole, and so is one that is truncated, corrupt or not an archive: one
:class:`ArchiveError` line each. Nothing is ever extracted with ``tarfile.extractall``.
"""
from __future__ import annotations

import re
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import List, Union

from .._errors import UnreadableCheckpointError

__all__ = ['ArchiveError', 'extract_tf_checkpoint', 'is_archive']

_CHECKPOINT_PART = re.compile(r'^(checkpoint|.+\.index|.+\.data-\d{5}-of-\d{5})$')


class ArchiveError(UnreadableCheckpointError):
    """A release archive that is truncated, corrupt, unsafe, or holds no checkpoint."""


def is_archive(head: bytes) -> bool:
    """Gzip (``.tar.gz``) or a plain POSIX/GNU tar, from the first 512 bytes."""
    return head[:2] == b'\x1f\x8b' or head[257:262] == b'ustar'


def _unsafe(name: str) -> bool:
    p = PurePosixPath(name.replace('\\', '/'))
    return p.is_absolute() or '..' in p.parts or re.match(r'^[A-Za-z]:', name) is not None


def extract_tf_checkpoint(archive: Union[str, Path], dest: Union[str, Path]) -> List[Path]:
    """Write the TensorFlow checkpoint parts of ``archive`` flat into the existing folder ``dest``; returns them.

    Raises :class:`ArchiveError` for an unreadable, truncated or unsafe archive, or one without an ``.index``.
    """
    archive, dest = Path(archive), Path(dest)
    written: List[Path] = []
    others: List[str] = []
    try:
        with tarfile.open(archive, mode='r|*') as tar:  # a stream: one pass, no seeking back in the gzip data
            for member in tar:
                if _unsafe(member.name):
                    raise ArchiveError(f'refusing {archive.name}: its member {member.name!r} would be written outside '
                                       f'the folder it is unpacked into')
                base = PurePosixPath(member.name).name
                if not _CHECKPOINT_PART.match(base):
                    if member.isfile():
                        others.append(member.name)
                    continue
                if not member.isfile():  # a link or device named like a checkpoint part
                    raise ArchiveError(f'refusing {archive.name}: its member {member.name!r} is not a regular file')
                target = dest / base
                if target.exists():
                    raise ArchiveError(f'{archive.name} holds two checkpoint parts named {base!r}: give the '
                                       f'checkpoint itself (its .index) instead of the archive')
                with tar.extractfile(member) as src, open(target, 'wb') as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                written.append(target)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArchiveError(f'{archive} is truncated or not a .tar.gz / .tar archive ({first}): delete it and fetch '
                           f'it again') from e
    if not any(p.suffix == '.index' for p in written):
        listed = ', '.join(others[:5]) + (f' ... ({len(others)} files)' if len(others) > 5 else '')
        raise ArchiveError(f'{archive.name} holds no TensorFlow checkpoint (no .index member)'
                           + (f'; its files: {listed}' if others else '; it is empty'))
    return written
