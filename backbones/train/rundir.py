"""The experiment directory of a training run: owned by one run at a time, and never left half-made.

* **One writer.** :meth:`RunDir.prepare` takes the run's lock, ``<output>/<experiment>.lock`` (created atomically,
  naming pid, host, start time and command: :func:`backbones._files.acquire_lock`). A second run into the same
  directory (fresh or ``--resume auto``) is refused in one line that names the process holding it, and nothing of the
  first run moves; a lock left by a run that no longer runs (SIGKILL, power loss) is reported and taken over.
* **Nothing written before the first checkpoint.** :meth:`RunDir.commit` runs just before it: it creates the
  directory (or moves an earlier run in it aside, whole, to ``<name>.earlier-<date-time>``), removes temporaries a
  killed run left, and writes ``args.yaml`` / ``summary.csv``. ``summary.csv`` is always written from the rows held in
  the latest checkpoint: it never lists an epoch whose checkpoint was not written.
* **A run that saved nothing leaves nothing.** :meth:`RunDir.close` after a run that wrote no checkpoint (it failed
  in epoch 0, or saving the first checkpoint failed) removes exactly what the run created -- files, the directory,
  the parent directories it made -- and moves an earlier run it had set aside back; it never touches anything else.
"""
import logging
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from timm.models import safe_model_name

from .._files import LockHeldError, acquire_lock, describe_owner, release_lock, remove_stale_temps
from .checkpoint import atomic_write_text, write_summary
from .errors import TrainError

__all__ = ['RunDir', 'run_dir_of', 'lock_path', 'BEST_DIR', 'SUMMARY', 'PLOT']

_logger = logging.getLogger('backbones.train')

BEST_DIR = 'best'  # save_for_hf export of the best weights: config.json + model.safetensors
SUMMARY = 'summary.csv'
PLOT = 'summary.png'
_RUN_FILES = ('args.yaml', SUMMARY, PLOT, 'last.pth.tar', 'model_best.pth.tar')


def run_dir_of(args, input_size: Optional[int] = None) -> Path:
    """The experiment directory: ``<output>/<experiment>``, or timm's ``<output>/<date-time>-<model>-<size>``."""
    base = Path(args.output or './output/train')
    if args.experiment:
        return base / args.experiment
    name = '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model), str(input_size)])
    return base / name


def lock_path(run_dir: Path) -> Path:
    """``<output>/<experiment>.lock``: beside the directory, so that moving an earlier run aside leaves it."""
    return run_dir.with_name(run_dir.name + '.lock')


def _holds_run(path: Path) -> bool:
    """Whether ``path`` holds files of a training run (this trainer's or timm's)."""
    return path.is_dir() and (any((path / f).exists() for f in _RUN_FILES + (BEST_DIR,))
                              or any(path.glob('checkpoint-*.pth.tar')))


def _aside(path: Path) -> Path:
    """A free sibling name for an earlier run: ``<name>.earlier-<date-time>[-N]``."""
    stem = f'{path.name}.earlier-{datetime.now().strftime("%Y%m%d-%H%M%S")}'
    aside, n = path.with_name(stem), 1
    while aside.exists():
        aside, n = path.with_name(f'{stem}-{n}'), n + 1
    return aside


def _make_dirs(path: Path) -> List[Path]:
    """``mkdir -p path``; returns the directories it created, outermost first."""
    missing = [p for p in [path, *path.parents] if not p.exists()][::-1]
    path.mkdir(parents=True, exist_ok=True)
    return missing


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class RunDir:
    """The experiment directory ``path`` of one run, written by the primary process only (see the module docstring).

    ``continues``: the run resumes from this directory's own checkpoint (it goes on in it); otherwise an earlier run
    found there is moved aside at the first checkpoint. ``rows``: the summary rows, appended by the trainer.
    """

    def __init__(self, path: Path, args_text: str, continues: bool, rows: List[Dict[str, Any]]):
        self.path = path
        self.lock = lock_path(path)
        self.args_text = args_text
        self.continues = continues
        self.rows = rows
        self.committed = False
        self.saved = False  # this run wrote a checkpoint (set by the trainer)
        self._locked = False
        self._created_parents: List[Path] = []
        self._created_dir = False
        self._before: Optional[Set[str]] = None  # the directory's entries when this run started writing in it
        self._aside: Optional[Path] = None

    def prepare(self) -> None:
        """Take the lock (a :class:`TrainError` when another run holds it). Writes nothing but the lock."""
        self._created_parents = _make_dirs(self.path.parent)
        try:
            stale = acquire_lock(self.lock)
        except LockHeldError as e:
            self._remove_created_parents()
            raise TrainError(
                f'{self.path} is in use by {describe_owner(e.owner)}, which is writing into it: wait for that run to '
                f'end or choose another --experiment (if that process is gone, delete {e.path})') from None
        self._locked = True
        if stale:
            _logger.warning(f'{self.path}: took over the lock of {describe_owner(stale)}, which no longer runs '
                            f'(killed?); its last checkpoint is what --resume auto continues from')
        if not self.continues and _holds_run(self.path):
            _logger.info(f'{self.path} holds an earlier run: it is moved aside, whole, when this run writes its '
                         f'first checkpoint (--resume auto continues it instead)')

    def commit(self) -> None:
        """Just before the first checkpoint: make the directory this run's and write its ``args.yaml``."""
        if self.committed:
            return
        if not self.path.exists():
            self.path.mkdir()
            self._created_dir = True
        elif not self.continues and _holds_run(self.path):
            self._aside = _aside(self.path)
            os.replace(self.path, self._aside)
            self.path.mkdir()
            self._created_dir = True
            _logger.warning(f'{self.path} held an earlier run: moved it to {self._aside}')
        self._before = set(os.listdir(self.path))
        stale = remove_stale_temps(self.path) + remove_stale_temps(self.path / BEST_DIR)
        staging = self.path / 'tmp.pth.tar'  # timm's CheckpointSaver stages last.pth.tar under this name
        if staging.is_file():
            staging.unlink()
            stale.append(staging)
        if stale:
            _logger.info(f'removed {len(stale)} temporary file(s) an interrupted run left in {self.path}: '
                         f'{", ".join(p.name for p in stale[:3])}')
        self.committed = True
        atomic_write_text(self.path / 'args.yaml', self.args_text)
        if self.rows or (self.path / SUMMARY).exists():
            write_summary(self.path / SUMMARY, self.rows)

    def close(self) -> None:
        """At the end of the run, whatever ended it: a run that saved nothing removes what it created; the lock
        goes."""
        try:
            if not self.saved and not self.continues:
                self._undo()
        finally:
            if self._locked:
                release_lock(self.lock)
                self._locked = False
            if not self.saved and not self.continues:
                self._remove_created_parents()

    def _undo(self) -> None:
        if self._before is not None and self.path.is_dir():
            for name in set(os.listdir(self.path)) - self._before:
                _remove(self.path / name)
        if self._created_dir and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()
        if self._aside is not None and not self.path.exists():
            os.replace(self._aside, self.path)
            _logger.info(f'no checkpoint was written: moved the earlier run back from {self._aside} to {self.path}')

    def _remove_created_parents(self) -> None:
        for p in reversed(self._created_parents):
            try:
                p.rmdir()  # only when empty: never removes anything else
            except OSError:
                break
