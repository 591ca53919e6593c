"""Temporary files and folders written beside their target, and removing the ones a killed process left behind.

Every writer of the package writes ``.<name>.tmp-<pid>-<random>`` next to its target and renames it into place
(``os.replace``, atomic), so a reader sees the old or the new file, never half of one. A ``try``/``finally`` removes
the temporary on any exception, Ctrl-C included; only a process killed outright (SIGKILL, power loss) leaves one,
and :func:`remove_stale_temps` removes those of dead processes on the next start.
"""
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import List

__all__ = ['temp_name', 'remove_stale_temps']

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
