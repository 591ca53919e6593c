"""The errors training and validation report to a person: one line that names the problem.

``tools/train.py`` and ``tools/validate.py`` print ``error: <message>`` for these (and for
:class:`backbones.train.ConfigError`) and exit with status 2, without a traceback. Every check that can fail this way
runs before anything is written into the output directory, or fails without touching what is already there.
"""
from .._cli import one_line

__all__ = ['TrainError', 'DataError', 'CheckpointError', 'ModelError', 'TrainInterrupted', 'one_line']


class TrainError(RuntimeError):
    """A problem with the input of a training / validation run (data, model, checkpoint, arguments), or a run that
    cannot go on (a full disk). ``exit_code``: the status ``tools/train.py`` exits with."""

    exit_code = 2


class DataError(TrainError):
    """The dataset cannot be used: missing directory, empty class folder, unreadable image, class mismatch.

    Takes exactly one message argument, so that a DataLoader worker can re-raise it in the main process."""


class CheckpointError(TrainError):
    """A checkpoint cannot be used for this run: unreadable, of another model, or not fitting the model."""


class ModelError(TrainError):
    """The model cannot be built: unknown name, unknown keyword argument, no pretrained weights."""


class TrainInterrupted(TrainError):
    """Ctrl-C: the message names the last good epoch and the command that continues the run."""

    exit_code = 130
