"""The errors training and validation report to a person: one line that names the problem.

``tools/train.py`` and ``tools/validate.py`` print ``error: <message>`` for these (and for
:class:`backbones.train.ConfigError`) and exit with status 2, without a traceback. Every check that can fail this way
runs before anything is written into the output directory, or fails without touching what is already there.
"""

__all__ = ['TrainError', 'DataError', 'CheckpointError', 'ModelError', 'one_line']


class TrainError(RuntimeError):
    """A problem with the input of a training / validation run (data, model, checkpoint, arguments)."""


class DataError(TrainError):
    """The dataset cannot be used: missing directory, empty class folder, unreadable image, class mismatch.

    Takes exactly one message argument, so that a DataLoader worker can re-raise it in the main process."""


class CheckpointError(TrainError):
    """A checkpoint cannot be used for this run: unreadable, of another model, or not fitting the model."""


class ModelError(TrainError):
    """The model cannot be built: unknown name, unknown keyword argument, no pretrained weights."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line.

    An error raised in a DataLoader worker arrives wrapped ("Caught DataError in DataLoader worker process 0. Original
    Traceback ..."): its last line holds the original message, after the exception's qualified name.
    """
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) == 1:
        return lines[0]
    last = lines[-1]
    for prefix in (f'{type(exc).__module__}.{type(exc).__qualname__}: ', f'{type(exc).__qualname__}: '):
        if last.startswith(prefix):
            return last[len(prefix):]
    return ' '.join(lines) if len(lines) <= 3 else last
