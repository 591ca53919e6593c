"""Read PaddlePaddle ``.pdparams`` files without PaddlePaddle, and without ever running pickled code.

``paddle.save(layer.state_dict(), path)`` pickles a dict of numpy arrays (PaddlePaddle ``python/paddle/framework/
io.py``: ``_build_saved_state_dict`` turns each tensor into ``tensor.numpy()``, plus a ``StructuredToParameterName@@``
name table; a tensor saved on its own is reduced to a ``(name, array)`` tuple). A pickle can name any Python callable
to be run while loading, so :class:`_DataUnpickler` resolves only what rebuilds numpy arrays of plain numeric dtypes
and plain containers; any other global (``os.system``, a class, a numpy subclass, an object dtype) stops the load with
one line naming it, before anything it names is called.
"""
from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, Union

import numpy as np

from .._errors import UnreadableCheckpointError

__all__ = ['read_pdparams', 'load_data_pickle', 'STRUCTURE_KEY']

STRUCTURE_KEY = 'StructuredToParameterName@@'  # paddle.save's table of structured -> parameter names
_NUMERIC_KINDS = 'biufc'  # bool, signed / unsigned int, float, complex: no objects, strings or records


class _Refused(pickle.UnpicklingError):
    """Something outside the allow-list (as opposed to a pickle that is cut short or garbled)."""


def _checked_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind not in _NUMERIC_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise _Refused(f'an array of dtype {dt!r} (only plain numeric arrays are read)')
    return dt


def _dtype(name: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype`` restricted to plain numeric types (the BUILD that follows only sets the byte order)."""
    if not isinstance(name, str):
        raise _Refused(f'numpy.dtype({name!r}) (only plain numeric dtypes are read)')
    return _checked_dtype(np.dtype(name, align, copy))


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` for plain ``ndarray`` only (the BUILD that follows fills it in through
    ``ndarray.__setstate__``, whose dtype comes from :func:`_dtype`)."""
    if cls is not np.ndarray:
        raise _Refused(f'an array of class {cls!r} (only numpy.ndarray is read)')
    return np.ndarray.__new__(np.ndarray, shape, np.uint8)


def _scalar(dtype: Any, data: Any = None) -> Any:
    dt = _checked_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise _Refused('a numpy scalar without its raw bytes')
    return np.frombuffer(data, dtype=dt)[0]


def _latin1(text: Any, encoding: str = 'latin1') -> bytes:
    """``_codecs.encode``, as protocol 2 pickles store ``bytes`` (an array's raw data): latin-1 text only."""
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
        raise _Refused(f'_codecs.encode({type(text).__name__}, {encoding!r}) (only latin-1 bytes are read)')
    return text.encode('latin1')


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str = 'C') -> np.ndarray:
    """Protocol 5's array reconstructor."""
    return np.frombuffer(buf, dtype=_checked_dtype(dtype)).reshape(shape, order=order).copy()


_ALLOWED: Dict[tuple, Callable] = {('collections', 'OrderedDict'): collections.OrderedDict,
                                   ('builtins', 'tuple'): tuple, ('_codecs', 'encode'): _latin1,
                                   ('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): _dtype}
for _core in ('numpy.core', 'numpy._core'):  # numpy 1.x and 2.x module names
    _ALLOWED.update({(f'{_core}.multiarray', '_reconstruct'): _reconstruct, (f'{_core}.multiarray', 'scalar'): _scalar,
                     (f'{_core}.numeric', '_frombuffer'): _frombuffer})


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`_ALLOWED` globals and no persistent ids."""

    def find_class(self, module: str, name: str):
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise _Refused(
                f'the global {module}.{name} (only numpy arrays and plain containers are read)')
        return fn

    def persistent_load(self, pid):
        raise _Refused(f'a persistent id {pid!r} (only numpy arrays and plain containers are read)')


def _plain(obj: Any) -> Any:
    """Containers -> dict / list, ``(name, array)`` tensor tuples -> the array; arrays checked (numeric, filled)."""
    if isinstance(obj, np.ndarray):
        _checked_dtype(obj.dtype)
        return obj
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return _plain(obj[1])
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def load_data_pickle(data: bytes, where: str) -> Any:
    """Unpickle ``data`` allowing numpy arrays and plain containers only (:class:`UnreadableCheckpointError`
    otherwise, naming the refused global)."""
    try:
        return _plain(_DataUnpickler(io.BytesIO(data)).load())
    except _Refused as e:
        raise UnreadableCheckpointError(
            f'refusing to load {where}: it holds {e}; loading it would run code or build arbitrary objects') from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableCheckpointError(f'cannot read {where} ({first}): the file is truncated or corrupt') from e


def read_pdparams(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """``{parameter name: array}`` of a ``paddle.save``-d state dict (the name table dropped)."""
    path = Path(path)
    obj = load_data_pickle(path.read_bytes(), str(path))
    if not isinstance(obj, dict):
        raise UnreadableCheckpointError(f'{path} holds a {type(obj).__name__}, not a state dict')
    return {str(k): v for k, v in obj.items() if k != STRUCTURE_KEY and isinstance(v, np.ndarray)}
