"""The readers of other frameworks' checkpoints (backbones.formats), against files the real frameworks wrote
(tests/fixtures/moat_tf: TensorFlow 2.21's tf.compat.v1 Saver; tests/fixtures/rednet_paddle: paddle.save) and against
the ways a file can be broken or hostile: truncated, corrupt, unsupported, or a pickle that would run code."""
import io
import json
import os
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from backbones._checkpoint import UnreadableCheckpointError, read_checkpoint_file
from backbones.formats import foreign_kind
from backbones.formats.archive import ArchiveError, extract_tf_checkpoint
from backbones.formats.crc32c import crc32c, mask, unmask
from backbones.formats.pdparams import load_data_pickle, read_pdparams
from backbones.formats.tf_bundle import TFCheckpoint, TFCheckpointError, find_checkpoint

HERE = Path(__file__).parent / 'fixtures' / 'moat_tf'
DTYPES = HERE / 'tf_dtypes'
PDPARAMS = Path(__file__).parent / 'fixtures' / 'rednet_paddle' / 'rednet26_s32_b16.pdparams'


# ---------------------------------------------------------------- CRC-32C

def _crc32c_bitwise(data: bytes) -> int:
    """RFC 3720 B.4's definition, one bit at a time."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_crc32c():
    # RFC 3720 B.4 test vectors, and the check value of the CRC catalogue
    assert crc32c(b'123456789') == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA and crc32c(b'\xff' * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E and crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    rng = np.random.default_rng(0)
    for n in (0, 1, 255, 256, 257, 5000, 70_001):  # below, at and above one lane; several lanes, odd counts
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _crc32c_bitwise(data), n
    assert all(unmask(mask(c)) == c for c in (0, 1, 0xFFFFFFFF, 0xE3069283))


# ---------------------------------------------------------------- TensorFlow checkpoints

def test_every_numeric_dtype_as_tensorflow_reads_it():
    """Each variable equals what tf.train.load_checkpoint returned for it (tf_dtypes.json, written by TensorFlow)."""
    oracle = json.loads((HERE / 'tf_dtypes.json').read_text())
    ckpt = TFCheckpoint(DTYPES)
    assert {k: list(v) for k, v in ckpt.shapes().items()} == {k: v['shape'] for k, v in oracle.items()}
    for name, want in oracle.items():
        if 'values' not in want:
            continue
        got = ckpt.read(name)
        assert list(got.shape) == want['shape'] and got.flags.writeable, name
        expected = np.array(want['values'], dtype=np.float64 if got.dtype.kind == 'f' else got.dtype)
        assert np.array_equal(got.reshape(-1).astype(expected.dtype), expected), name
        kind = 'float32' if want['dtype'] == 'bfloat16' else want['dtype']  # bfloat16 is widened, exactly
        assert got.dtype == np.dtype(kind), name


def test_unsupported_tensors_are_named():
    ckpt = TFCheckpoint(DTYPES)
    with pytest.raises(TFCheckpointError, match=r"tensor 'group/string' .* has dtype string, which this reader does "
                                                r"not support"):
        ckpt.read('group/string')
    with pytest.raises(TFCheckpointError, match=r"tensor 'partitioned' .* is a partitioned variable"):
        ckpt.read('partitioned')
    assert not any(k.startswith('\x00') for k in ckpt.entries)  # the slices' own records stay hidden


def test_checkpoint_is_found_from_any_of_its_names(tmp_path):
    prefix = DTYPES / 'dtypes.ckpt'
    for given in (DTYPES, prefix, DTYPES / 'dtypes.ckpt.index', DTYPES / 'dtypes.ckpt.data-00000-of-00001'):
        assert find_checkpoint(given) == prefix and foreign_kind(given) == 'tf'
    with pytest.raises(FileNotFoundError, match='no TensorFlow checkpoint'):
        find_checkpoint(tmp_path)
    for stem in ('a', 'b'):
        for p in DTYPES.iterdir():
            shutil.copy(p, tmp_path / p.name.replace('dtypes.ckpt', stem))
    with pytest.raises(TFCheckpointError, match='holds 2 TensorFlow checkpoints'):
        find_checkpoint(tmp_path)
    (tmp_path / 'checkpoint').write_text('model_checkpoint_path: "b"\n')  # the state file names one
    assert find_checkpoint(tmp_path) == tmp_path / 'b'


def _copy(tmp_path):
    dest = tmp_path / 'ckpt'
    shutil.copytree(DTYPES, dest)
    return dest / 'dtypes.ckpt.index', dest / 'dtypes.ckpt.data-00000-of-00001'


def _flip(path: Path, offset: int):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_broken_files_are_one_clear_error(tmp_path):
    index, data = _copy(tmp_path)
    entry = TFCheckpoint(index).entries['float32']
    _flip(data, entry.offset)
    with pytest.raises(TFCheckpointError, match=r"is corrupt: the checksum of tensor 'float32' .* does not match"):
        TFCheckpoint(index).read('float32')
    data.write_bytes(data.read_bytes()[:entry.offset + 4])
    with pytest.raises(TFCheckpointError, match=r"is truncated: tensor 'float32' .* needs bytes"):
        TFCheckpoint(index).read('float32')
    data.unlink()
    with pytest.raises(TFCheckpointError, match=r'its data file dtypes\.ckpt\.data-00000-of-00001 is missing'):
        TFCheckpoint(index).read('float32')

    index, _ = _copy(tmp_path / 'b')
    full = index.read_bytes()
    index.write_bytes(full[:-20])
    with pytest.raises(TFCheckpointError, match='is truncated or not a TensorFlow checkpoint index'):
        TFCheckpoint(index)
    index.write_bytes(full)
    _flip(index, 10)  # inside the first data block
    with pytest.raises(TFCheckpointError, match=r'is corrupt: the checksum of the block at byte 0 does not match'):
        TFCheckpoint(index)


def test_compressed_blocks_are_refused(tmp_path):
    """A block whose trailer says snappy (LevelDB's type 1), its checksum recomputed so only the type is wrong."""
    index, _ = _copy(tmp_path)
    data = bytearray(index.read_bytes())
    footer = data[-48:]
    # the first data block's handle sits in the index block; the first block starts at 0: find its trailer by its CRC
    for end in range(5, len(data) - 48):
        if unmask(struct.unpack('<I', data[end + 1:end + 5])[0]) == crc32c(bytes(data[:end + 1])) and data[end] == 0:
            data[end] = 1
            data[end + 1:end + 5] = struct.pack('<I', mask(crc32c(bytes(data[:end + 1]))))
            break
    else:
        pytest.fail('no block trailer found')
    assert data[-48:] == footer
    index.write_bytes(bytes(data))
    with pytest.raises(TFCheckpointError, match='uses snappy-compressed blocks, which this reader does not support'):
        TFCheckpoint(index)


# ---------------------------------------------------------------- release archives

def _tar(path: Path, members, gz=True):
    with tarfile.open(path, 'w:gz' if gz else 'w') as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == 'symlink':
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_extracts_only_checkpoint_parts(tmp_path):
    parts = [(f'release/{p.name}', p.read_bytes(), 'file') for p in sorted(DTYPES.iterdir())]
    archive = _tar(tmp_path / 'r.tar', parts + [('release/README', b'hi', 'file')], gz=False)
    (tmp_path / 'out').mkdir()
    written = extract_tf_checkpoint(archive, tmp_path / 'out')
    assert sorted(p.name for p in written) == sorted(p.name for p in DTYPES.iterdir())
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == sorted(p.name for p in DTYPES.iterdir())
    assert foreign_kind(archive) == 'archive'


@pytest.mark.parametrize('members,message', [
    ([('../up.index', b'x', 'file')], r"member '\.\./up\.index' would be written outside"),
    ([('/abs/model.index', b'x', 'file')], r"member '/abs/model\.index' would be written outside"),
    ([('a/model.ckpt.index', '/etc/passwd', 'symlink')], r"member 'a/model\.ckpt\.index' is not a regular file"),
    ([('a/model.ckpt.index', b'1', 'file'), ('b/model.ckpt.index', b'2', 'file')], 'two checkpoint parts named'),
    ([('notes.txt', b'x', 'file')], r'holds no TensorFlow checkpoint \(no \.index member\); its files: notes\.txt'),
])
def test_unsafe_or_empty_archives_are_refused(tmp_path, members, message):
    archive = _tar(tmp_path / 'bad.tar.gz', members)
    (tmp_path / 'out').mkdir()
    with pytest.raises(ArchiveError, match=message):
        extract_tf_checkpoint(archive, tmp_path / 'out')
    assert not (tmp_path / 'up.index').exists() and not Path('/abs').exists()


def test_truncated_archive(tmp_path):
    full = (HERE / 'moat_fx_global_w_position_embedding.tar.gz').read_bytes()
    cut = tmp_path / 'cut.tar.gz'
    cut.write_bytes(full[:len(full) // 2])
    with pytest.raises(UnreadableCheckpointError, match=r'cut\.tar\.gz is truncated or not a \.tar\.gz / \.tar '):
        read_checkpoint_file(cut, workdir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cut.tar.gz']  # the temporary unpack folder is gone


# ---------------------------------------------------------------- PaddlePaddle .pdparams and data pickles

class _Payload:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_pdparams_written_by_paddle():
    sd = read_pdparams(PDPARAMS)
    assert 'StructuredToParameterName@@' not in sd and len(sd) == 211
    assert sd['fc.weight'].shape == (512, 10) and sd['fc.weight'].dtype == np.float32
    assert foreign_kind(PDPARAMS) == 'pickle'


@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_numpy_pickles_read_as_numpy_reads_them(protocol):
    """numpy's own unpickling is the oracle: every numeric dtype, scalars, fortran order, big-endian data, and the
    ``(name, array)`` tuple paddle.save makes of a lone tensor."""
    obj = {'f32': np.arange(6, dtype=np.float32).reshape(2, 3), 'f16': np.array([1.5], np.float16),
           'i64': np.array([-3, 2 ** 40]), 'b': np.array([True, False]), 'c': np.array([1 + 2j]),
           'fortran': np.asfortranarray(np.arange(6.).reshape(2, 3)), 'big': np.arange(3, dtype='>i4'),
           'scalar': np.float32(2.5), 'tensor': ('linear_0.w_0', np.ones((2, 2), np.float32)), 'n': [1, 'a']}
    data = pickle.dumps(obj, protocol=protocol)
    want, got = pickle.loads(data), load_data_pickle(data, 'x')
    for k, v in want.items():
        v = v[1] if k == 'tensor' else v
        if isinstance(v, np.ndarray):
            assert np.array_equal(got[k], v) and got[k].dtype == v.dtype and got[k].shape == v.shape, k
    assert got['scalar'] == want['scalar'] and got['n'] == [1, 'a']


@pytest.mark.parametrize('payload,named', [
    (lambda marker: {'w': np.zeros(2), 'meta': _Payload(marker)}, 'posix.system|os.system'),
    (lambda marker: {'w': np.array([object(), 1], dtype=object)}, "dtype\\('O'\\)|builtins.object"),
    (lambda marker: {'w': np.rec.array([(1, 2.0)], dtype=[('a', 'i4'), ('b', 'f4')])}, 'numpy.*rec'),
    (lambda marker: {'w': np.ma.masked_array([1, 2])}, 'numpy.ma'),
])
def test_pickles_that_are_not_plain_arrays_are_refused(tmp_path, payload, named):
    """Anything beyond numeric arrays and plain containers stops the load, naming it; the payload never runs."""
    marker = tmp_path / 'payload_ran'
    path = tmp_path / 'evil.pdparams'
    path.write_bytes(pickle.dumps(payload(marker), protocol=4))
    with pytest.raises(UnreadableCheckpointError, match=rf'refusing to load .*evil\.pdparams: it holds .*({named})') \
            as e:
        read_checkpoint_file(path)
    assert '\n' not in str(e.value) and not marker.exists()


def test_truncated_pdparams(tmp_path):
    cut = tmp_path / 'cut.pdparams'
    cut.write_bytes(PDPARAMS.read_bytes()[:100_000])
    with pytest.raises(UnreadableCheckpointError, match=r'cannot read .*cut\.pdparams .*truncated or corrupt'):
        read_checkpoint_file(cut)
