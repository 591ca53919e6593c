"""Read TensorFlow checkpoints (the "tensor bundle" V2 format) with numpy alone: no TensorFlow needed.

A checkpoint with prefix ``P`` is ``P.index`` plus ``P.data-00000-of-0000N`` shards (TensorFlow
``tensorflow/core/util/tensor_bundle/tensor_bundle.{h,cc}``; ``tf.compat.v1.train.Saver`` and
``tf.train.Checkpoint`` both write it):

* ``P.index`` is a LevelDB-format table (``tensorflow/core/lib/io/table_format.txt``; LevelDB ``doc/table_format.md``):
  data blocks of prefix-compressed ``key -> value`` entries, an index block pointing at them, and a 48-byte footer
  ending in the magic ``0xdb4775248b80fb57``. Every block carries a type byte (TensorFlow writes the index
  uncompressed, ``TableBuilderOptions()``) and the masked CRC-32C of its bytes.
* The entry under the empty key is a ``BundleHeaderProto`` (shard count, endianness, format version); every other
  key is a tensor name whose value is a ``BundleEntryProto`` (``tensorflow/core/protobuf/tensor_bundle.proto``:
  dtype, shape, shard, offset, size, masked CRC-32C of the tensor's bytes), decoded here by a minimal protobuf reader.
* A tensor is its raw bytes (C order) at ``[offset, offset + size)`` of its shard.

Every checksum is verified. Anything truncated, corrupt or outside what this reader supports (string / variant /
quantized tensors, partitioned variables, a newer format version, compressed blocks) raises one
:class:`TFCheckpointError` that says which and names the file or tensor.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from .._errors import UnreadableCheckpointError
from .crc32c import crc32c, unmask

__all__ = ['TFCheckpoint', 'TFCheckpointError', 'TRAINING_STATE', 'find_checkpoint', 'read_tf_checkpoint',
           'is_tf_index']

TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48  # two block handles padded to 40 bytes, then the 8-byte magic
_TRAILER = 5  # block type byte + masked CRC-32C
_FORMAT_VERSION = 1  # kTensorBundleVersion: what this reader understands (as TensorFlow's own consumer)
_DATA_FILE = re.compile(r'^(?P<prefix>.+)\.data-(?P<shard>\d{5})-of-(?P<shards>\d{5})$')

# tensorflow/core/framework/types.proto DataType -> numpy (bfloat16 is read as uint16 and widened exactly)
_DTYPES = {
    1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 8: np.complex64,
    9: np.int64, 10: np.bool_, 14: 'bfloat16', 17: np.uint16, 18: np.complex128, 19: np.float16, 22: np.uint32,
    23: np.uint64,
}
_UNSUPPORTED = {7: 'string', 11: 'qint8', 12: 'quint8', 13: 'qint32', 15: 'qint16', 16: 'quint16', 20: 'resource',
                21: 'variant'}


class TFCheckpointError(UnreadableCheckpointError):
    """A TensorFlow checkpoint that is truncated, corrupt, or uses a feature this reader does not support."""


def is_tf_index(path: Union[str, Path]) -> bool:
    """Whether ``path`` ends in the LevelDB table magic (a TensorFlow ``.index`` file), whatever its name."""
    try:
        with open(path, 'rb') as f:
            f.seek(0, 2)
            if f.tell() < _FOOTER:
                return False
            f.seek(-8, 2)
            return struct.unpack('<Q', f.read(8))[0] == TABLE_MAGIC
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- protobuf wire format

def _varint(buf: bytes, pos: int, what: str) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFCheckpointError(f'{what}: a varint runs past the end of its record (corrupt)')
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFCheckpointError(f'{what}: a varint longer than 10 bytes (corrupt)')


def _fields(buf: bytes, what: str) -> Dict[int, List[Union[int, bytes]]]:
    """``{field number: [values]}`` of a protobuf message: varints and fixed ints as ints, length-delimited fields
    (strings, sub-messages, packed arrays) as bytes."""
    out: Dict[int, List[Union[int, bytes]]] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, what)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, what)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if pos + n > len(buf):
                raise TFCheckpointError(f'{what}: a fixed-size field runs past the end of its record (corrupt)')
            value, pos = int.from_bytes(buf[pos:pos + n], 'little'), pos + n
        elif wire == 2:
            n, pos = _varint(buf, pos, what)
            if pos + n > len(buf):
                raise TFCheckpointError(f'{what}: a length-delimited field runs past the end of its record (corrupt)')
            value, pos = bytes(buf[pos:pos + n]), pos + n
        else:
            raise TFCheckpointError(f'{what}: protobuf wire type {wire} is not used by checkpoints (corrupt)')
        out.setdefault(field, []).append(value)
    return out


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _one(fields: Dict[int, list], number: int, default=0):
    return fields.get(number, [default])[-1]  # protobuf: the last occurrence of a scalar field wins


# ---------------------------------------------------------------------------------------------- LevelDB table

def _block_handle(buf: bytes, pos: int, what: str) -> Tuple[int, int, int]:
    offset, pos = _varint(buf, pos, what)
    size, pos = _varint(buf, pos, what)
    return offset, size, pos


def _block(data: bytes, offset: int, size: int, where: str) -> bytes:
    """The checked contents of the block at ``offset`` (``size`` bytes plus its 5-byte trailer)."""
    end = offset + size + _TRAILER
    if end > len(data):
        raise TFCheckpointError(f'{where} is truncated: a block ends at byte {end}, the file has {len(data)}')
    contents, kind = data[offset:offset + size], data[offset + size]
    stored = int.from_bytes(data[offset + size + 1:end], 'little')
    if unmask(stored) != crc32c(data[offset:offset + size + 1]):
        raise TFCheckpointError(f'{where} is corrupt: the checksum of the block at byte {offset} does not match')
    if kind != 0:
        name = {1: 'snappy'}.get(kind, f'type {kind}')
        raise TFCheckpointError(f'{where} uses {name}-compressed blocks, which this reader does not support '
                                f'(TensorFlow writes checkpoint indexes uncompressed since 1.2)')
    return contents


def _entries(block: bytes, where: str) -> Iterator[Tuple[bytes, bytes]]:
    """The ``(key, value)`` entries of a block, in order (keys are stored as a suffix after a shared prefix)."""
    if len(block) < 4:
        raise TFCheckpointError(f'{where} is corrupt: a block of {len(block)} bytes has no restart array')
    num_restarts = int.from_bytes(block[-4:], 'little')
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise TFCheckpointError(f'{where} is corrupt: a block claims {num_restarts} restart points')
    pos, key = 0, b''
    while pos < limit:
        shared, pos = _varint(block, pos, where)
        unshared, pos = _varint(block, pos, where)
        value_len, pos = _varint(block, pos, where)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise TFCheckpointError(f'{where} is corrupt: a table entry runs past its block')
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + value_len]
        pos += value_len


def _table(data: bytes, where: str) -> Iterator[Tuple[bytes, bytes]]:
    """Every ``(key, value)`` of a LevelDB table held in ``data``."""
    if len(data) < _FOOTER:
        raise TFCheckpointError(f'{where} is truncated or not a TensorFlow checkpoint index ({len(data)} bytes)')
    footer = data[-_FOOTER:]
    if struct.unpack('<Q', footer[-8:])[0] != TABLE_MAGIC:
        raise TFCheckpointError(f'{where} is truncated or not a TensorFlow checkpoint index (no table magic at its '
                                f'end)')
    _, _, pos = _block_handle(footer, 0, where)  # the metaindex block: checkpoints keep nothing there
    index_offset, index_size, _ = _block_handle(footer, pos, where)
    for _, handle in _entries(_block(data, index_offset, index_size, where), where):
        offset, size, _ = _block_handle(handle, 0, where)
        yield from _entries(_block(data, offset, size, where), where)


# ---------------------------------------------------------------------------------------------- the bundle

@dataclass(frozen=True)
class _Entry:
    dtype: int
    shape: Tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int
    partitioned: bool = False


def _shape(buf: bytes, what: str) -> Tuple[int, ...]:
    fields = _fields(buf, what)
    if _one(fields, 3):
        raise TFCheckpointError(f'{what}: a tensor of unknown rank (corrupt)')
    dims = tuple(_int64(_one(_fields(d, what), 1)) for d in fields.get(2, []))
    if any(d < 0 for d in dims):
        raise TFCheckpointError(f'{what}: a tensor with an unknown dimension {dims} (corrupt)')
    return dims


def _entry(name: str, value: bytes, where: str) -> _Entry:
    what = f'{where}, tensor {name!r}'
    fields = _fields(value, what)
    return _Entry(dtype=_one(fields, 1), shape=_shape(_one(fields, 2, b''), what), shard=_one(fields, 3),
                  offset=_int64(_one(fields, 4)), size=_int64(_one(fields, 5)), crc=_one(fields, 6),
                  partitioned=bool(fields.get(7)))


def find_checkpoint(path: Union[str, Path]) -> Path:
    """The checkpoint prefix ``P`` (``P.index`` exists) that ``path`` names: the prefix itself (as
    ``tf.train.load_checkpoint`` takes it), its ``.index`` or a ``.data-*`` shard, or a folder holding exactly one
    checkpoint (the one its ``checkpoint`` state file names, if there are several)."""
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.glob('*.index'))
        state = path / 'checkpoint'
        if len(indexes) > 1 and state.is_file():
            m = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state.read_text(errors='replace'), re.M)
            if m and (path / (Path(m[1]).name + '.index')).is_file():
                return path / Path(m[1]).name
        if len(indexes) == 1:
            return indexes[0].with_suffix('')
        if not indexes:
            raise FileNotFoundError(f'no TensorFlow checkpoint (no .index file) in {path}')
        raise TFCheckpointError(f'{path} holds {len(indexes)} TensorFlow checkpoints '
                                f'({", ".join(p.name for p in indexes[:4])}): give the .index of the one to read')
    if path.suffix == '.index' and path.is_file():
        return path.with_suffix('')
    m = _DATA_FILE.match(path.name)
    if m and path.with_name(m['prefix'] + '.index').is_file():
        return path.with_name(m['prefix'])
    if path.with_name(path.name + '.index').is_file():
        return path
    raise FileNotFoundError(f'no TensorFlow checkpoint at {path} (expected a prefix P with P.index beside it, the '
                            f'.index file, or a folder holding one)')


class TFCheckpoint:
    """A TensorFlow checkpoint opened for reading: its variable list at once, each tensor when asked for.

    Args:
        path: anything :func:`find_checkpoint` accepts.
    """

    def __init__(self, path: Union[str, Path]):
        self.prefix = find_checkpoint(path)
        index = self.prefix.with_name(self.prefix.name + '.index')
        where = str(index)
        records = iter(_table(index.read_bytes(), where))
        first = next(records, None)
        if first is None or first[0] != b'':
            raise TFCheckpointError(f'{where} is corrupt: it does not start with the bundle header')
        header = _fields(first[1], f'{where}, header')
        version = _fields(_one(header, 3, b''), f'{where}, header')
        if _one(version, 2) > _FORMAT_VERSION or _FORMAT_VERSION in version.get(3, []):
            raise TFCheckpointError(f'{where} needs tensor-bundle format version {_one(version, 2)} (this reader '
                                    f'reads version {_FORMAT_VERSION}): written by a newer TensorFlow')
        self.num_shards = _one(header, 1)
        self.big_endian = _one(header, 2) == 1
        self.entries: Dict[str, _Entry] = {}
        for key, value in records:
            if key.startswith(b'\x00'):  # one slice of a partitioned variable (an encoded slice name)
                continue
            name = key.decode('utf-8', errors='replace')
            self.entries[name] = _entry(name, value, where)

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        """``{name: shape}``, as ``tf.train.load_checkpoint(...).get_variable_to_shape_map()``."""
        return {k: e.shape for k, e in self.entries.items()}

    def _shard_path(self, shard: int) -> Path:
        return self.prefix.with_name(f'{self.prefix.name}.data-{shard:05d}-of-{self.num_shards:05d}')

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a writable numpy array (bfloat16 widened to float32), its checksum verified."""
        e = self.entries[name]
        what = f'tensor {name!r} of {self.prefix}'
        if e.partitioned:
            raise TFCheckpointError(f'{what} is a partitioned variable (saved in slices), which this reader does '
                                    f'not support')
        if e.dtype in _UNSUPPORTED or e.dtype not in _DTYPES:
            kind = _UNSUPPORTED.get(e.dtype, f'DataType {e.dtype}')
            raise TFCheckpointError(f'{what} has dtype {kind}, which this reader does not support')
        bf16 = _DTYPES[e.dtype] == 'bfloat16'
        dtype = np.dtype(np.uint16 if bf16 else _DTYPES[e.dtype]).newbyteorder('>' if self.big_endian else '<')
        count = int(np.prod(e.shape, dtype=np.int64))
        if e.size != count * dtype.itemsize or e.shard >= self.num_shards:
            raise TFCheckpointError(f'{what} is corrupt: its entry says {e.size} bytes in shard {e.shard}, its shape '
                                    f'{e.shape} needs {count * dtype.itemsize} in one of {self.num_shards} shards')
        shard = self._shard_path(e.shard)
        if not shard.is_file():
            raise TFCheckpointError(f'{what}: its data file {shard.name} is missing')
        raw = np.empty(e.size, dtype=np.uint8)
        with open(shard, 'rb') as f:
            f.seek(e.offset)
            got = f.readinto(memoryview(raw))
        if got != e.size:
            raise TFCheckpointError(f'{shard} is truncated: {what} needs bytes {e.offset}..{e.offset + e.size}, the '
                                    f'file has {shard.stat().st_size}')
        if crc32c(raw) != unmask(e.crc):
            raise TFCheckpointError(f'{shard} is corrupt: the checksum of {what} does not match')
        arr = raw.view(dtype).reshape(e.shape)
        if bf16:
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(dtype.newbyteorder('='), copy=False)

    def read_all(self, names: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
        return {n: self.read(n) for n in (self.entries if names is None else names)}


# optimizer slots (``<variable>/<Optimizer>[_<n>]``, TF2 ``optimizer/...``) and step counters: training state
TRAINING_STATE = re.compile(
    r'(^|/)(global_step|beta[12]_power)$|/(Momentum|Adam(_\d+)?|RMSProp(_\d+)?|Adagrad|Ftrl(_\d+)?|LARS|'
    r'Adafactor\w*)$|^optimizer/|^_CHECKPOINTABLE_OBJECT_GRAPH$')


def read_tf_checkpoint(path: Union[str, Path], training_state: bool = False) -> Dict[str, np.ndarray]:
    """``{variable name: array}`` of a TensorFlow checkpoint, as ``tf.train.load_checkpoint`` gives it, without the
    optimizer slots and step counters unless ``training_state`` (they would double or triple what is read)."""
    ckpt = TFCheckpoint(path)
    return ckpt.read_all(n for n in ckpt.entries if training_state or not TRAINING_STATE.search(n))
