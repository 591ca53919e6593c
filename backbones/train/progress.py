"""What a person watches: a progress bar per epoch, one summary line per epoch, a plot.

On a terminal the bar is a ``tqdm`` bar (loss, lr, images/s and tqdm's own ETA); when the output is a file or a pipe
(a cluster log, CI) the same numbers are logged as one plain line every ``--log-interval`` steps and at the end of the
epoch, so logs stay readable. Only the primary process shows anything.
"""
import logging
import os
import sys
import time
from typing import Optional

__all__ = ['Progress', 'format_duration']

_logger = logging.getLogger('backbones.train')


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h:d}:{m:02d}:{s:02d}' if h else f'{m:d}:{s:02d}'


class Progress:
    """Progress of one pass over a loader (``total`` steps of about ``batch`` images each)."""

    def __init__(self, total: int, desc: str, enabled: bool = True, log_interval: int = 50,
                 use_bar: Optional[bool] = None, stream=None):
        self.total = max(1, total)
        self.desc = desc
        self.enabled = enabled
        self.log_interval = max(1, log_interval)
        self.stream = stream or sys.stderr
        if use_bar is None:
            use_bar = _is_sized_terminal(self.stream)
        self.bar = None
        if enabled and use_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=desc, file=self.stream, dynamic_ncols=True, leave=True,
                            unit='step', smoothing=0.1)
        self.start = time.perf_counter()
        self.step = 0
        self.images = 0

    def update(self, images: int, **metrics) -> None:
        """One step done, ``images`` images in it; ``metrics`` (e.g. ``loss=1.23, lr=0.01``) are shown."""
        self.step += 1
        self.images += images
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.images / elapsed
        if self.bar is not None:
            post = {k: _fmt(v) for k, v in metrics.items()}
            post['img/s'] = f'{rate:.1f}'
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        elif self.step % self.log_interval == 0 or self.step == self.total:
            eta = elapsed / self.step * (self.total - self.step)
            shown = '  '.join(f'{k} {_fmt(v)}' for k, v in metrics.items())
            width = len(str(self.total))
            _logger.info(f'{self.desc} [{self.step:>{width}d}/{self.total} {100.0 * self.step / self.total:3.0f}%]  '
                         f'{shown}  {rate:.1f} img/s  ETA {format_duration(eta)}')

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.images / max(self.elapsed, 1e-9)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_sized_terminal(stream) -> bool:
    """A terminal with a known width (a bar on a 0-column pseudo-terminal would print nothing)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
            return f'{v:.3e}'
        return f'{v:.4f}'
    return str(v)
