"""The checkpoint errors every loading path raises, in the lowest module of the package.

:mod:`backbones.formats` (other frameworks' readers) raises :class:`UnreadableCheckpointError` and
:mod:`backbones._checkpoint` reads through those readers, so the classes live below both (imports go one way only);
:mod:`backbones._checkpoint` re-exports them.
"""

__all__ = ['CheckpointMismatchError', 'UnreadableCheckpointError']


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model: wrong family, wrong variant, other head size, missing keys."""


class UnreadableCheckpointError(ValueError):
    """The checkpoint file is truncated / corrupt / not a checkpoint, or would need to unpickle code."""
