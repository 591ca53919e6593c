"""Temporary files and folders written beside their target, removing the ones a killed process left behind, and
lock files.

Every writer of the package writes ``.<name>.tmp-<pid>-<random>`` next to its target and renames it into place
(``os.replace``, atomic), so a reader sees the old or the new file, never half of one. A ``try``/``finally`` removes
the temporary on any exception, Ctrl-C included; only a process killed outright (SIGKILL, power loss) leaves one,
and :func:`remove_stale_temps` removes those of dead processes on the next start.

:func:`acquire_lock` makes a directory (a training run's) one process's: the lock file is created atomically
(``O_CREAT | O_EXCL``, so of two processes exactly one succeeds) and names its owner (pid, host, start time,
command), so a second writer is refused with a line that says who holds it, and a lock left by a process that no
longer runs on this host is recognised as stale and taken over.
"""
import json
import os
import re
import shutil
import socket
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ['temp_name', 'remove_stale_temps', 'acquire_lock', 'release_lock', 'describe_owner', 'LockHeldError']

_TEMP = re.compile(r'^\.(?P<name>.+)\.(tmp|old)-(?P<pid>\d+)-[0-9a-zA-Z_]+$')


def temp_name(path: Path, kind: str = 'tmp') -> Path:
    """``<dir>/.<name>.<kind>-<pid>-<random>``: a hidden sibling of ``path`` that names its writer's process."""
    path = Path(path)
    return path.with_name(f'.{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}')


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(directory: Path, name: str = None) -> List[Path]:
    """Remove the temporaries in ``directory`` (of target ``name`` only, if given) whose writer is no longer
    running; returns what was removed."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TEMP.match(p.name)
        if not m or (name is not None and m['name'] != name) or _alive(int(m['pid'])):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------------- lock files
class LockHeldError(RuntimeError):
    """The lock file is held by a running process (or by one on another host, which cannot be checked).
    ``owner``: what the lock file says (pid, host, started, command); ``path``: the lock file."""

    def __init__(self, message: str, path: Path, owner: Dict):
        super().__init__(message)
        self.path, self.owner = path, owner


def _read_owner(path: Path) -> Optional[Dict]:
    try:
        owner = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError, RecursionError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get('pid'), int) else None


def describe_owner(owner: Dict) -> str:
    """'process 123 on host (started 2024-05-01T10:00:00)'."""
    return f"process {owner.get('pid', '?')} on {owner.get('host', '?')} (started {owner.get('started', '?')})"


def acquire_lock(path: Path) -> Optional[Dict]:
    """Create the lock file ``path`` for this process, atomically; returns the owner of a stale lock it replaced
    (a process of this host that no longer runs), else None.

    The lock is written complete under a temporary name and hard-linked into place (``os.link`` fails when ``path``
    exists: of two processes exactly one succeeds, and a reader never sees a half-written lock; where the file
    system has no hard links, ``O_CREAT | O_EXCL``). Raises :class:`LockHeldError` when a running process holds it,
    or a process of another host (whose liveness cannot be checked from here)."""
    path = Path(path)
    me = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': datetime.now().isoformat(timespec='seconds'),
          'command': ' '.join(sys.argv)[:500]}
    tmp = temp_name(path)
    tmp.write_text(json.dumps(me), encoding='utf-8')
    stale = None
    try:
        for _ in range(3):  # create; or take over a stale lock and create again
            if _link_or_create(tmp, path, me):
                return stale
            owner = _read_owner(path)
            if owner is not None and (owner.get('host') != me['host'] or _alive(owner['pid'])):
                raise LockHeldError(f'{path} is held by {describe_owner(owner)}', path, owner)
            stale = _take_stale(path, owner) or stale
    finally:
        tmp.unlink(missing_ok=True)
    raise LockHeldError(f'could not lock {path}: other processes keep taking it over', path, _read_owner(path) or {})


def _link_or_create(tmp: Path, path: Path, content: Dict) -> bool:
    """Put ``tmp`` in place as ``path`` unless ``path`` exists; whether it did."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here: exclusive create (a reader may briefly see it empty)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            json.dump(content, f)
        return True


def _take_stale(path: Path, owner: Optional[Dict]) -> Optional[Dict]:
    """Move the stale lock ``path`` (whose owner was read as ``owner``) out of the way. When another process replaced
    it with its own live lock in the meantime, that lock is put back and :class:`LockHeldError` raised."""
    aside = temp_name(path, 'old')
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None  # another process took the stale lock over first: try to create again
    moved = _read_owner(aside)
    try:
        if moved != owner and moved is not None:  # not the stale lock any more: a live one, put it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            raise LockHeldError(f'{path} is held by {describe_owner(moved)}', path, moved)
    finally:
        aside.unlink(missing_ok=True)
    return owner or {'pid': '?', 'host': '?', 'started': '?'}


def release_lock(path: Path) -> None:
    """Remove the lock file ``path`` if this process holds it."""
    path = Path(path)
    owner = _read_owner(path)
    if owner is not None and owner.get('pid') == os.getpid() and owner.get('host') == socket.gethostname():
        path.unlink(missing_ok=True)
