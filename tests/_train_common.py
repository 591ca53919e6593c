"""Shared pieces of the training / validation tests: a tiny dataset, a tiny zoo model, subprocess helpers."""
import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / 'tools' / 'train.py')
VALIDATE = str(ROOT / 'tools' / 'validate.py')

# rednet26 with narrow stages (zoo model, real involution code): ~17k params, trains in well under a second per epoch
TINY_MODEL = ['--model', 'rednet26', '--model-kwargs', 'stem_chs=16', 'widths=(32,32,64,64)', 'depths=(1,1,1,1)',
              'group_channels=8']
TINY_DATA = dict(image_size=32, train_per_class=4, val_per_class=3)  # 40 train, 30 val images


def tiny_argv(data_dir, output, experiment: str, *extra: str, epochs: int = 2, batch: int = 8) -> List[str]:
    return [
        '--data-dir', str(data_dir), *TINY_MODEL, '--img-size', '32', '-b', str(batch), '-j', '0', '--device', 'cpu',
        '--opt', 'adamw', '--lr', '2e-3', '--warmup-epochs', '0', '--epochs', str(epochs), '--output', str(output),
        '--experiment', experiment, '--log-interval', '100', '--seed', '3', *extra,
    ]


def subprocess_env() -> Dict[str, str]:
    env = dict(os.environ)
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    env['OMP_NUM_THREADS'] = '1'  # one compute thread: fast and deterministic on a small shared machine
    env['PYTHONUNBUFFERED'] = '1'
    return env


def run_tool(script: str, argv: List[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *argv], env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def snapshot(directory: Path) -> Dict[str, str]:
    """relative path -> sha256 of every file under ``directory``."""
    out = {}
    for p in sorted(Path(directory).rglob('*')):
        if p.is_file():
            out[str(p.relative_to(directory))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def summary_rows(run_dir: Path) -> List[Dict[str, str]]:
    import csv
    with open(run_dir / 'summary.csv', newline='') as f:
        text = f.read()
    assert text.count('epoch,') == 1, 'summary.csv must have exactly one header'
    return list(csv.DictReader(text.splitlines()))


def error_lines(stderr: str) -> List[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith('error:')]


def load_weights_only(path: Path, key: Optional[str] = None):
    import torch
    ck = torch.load(str(path), map_location='cpu', weights_only=True)
    return ck if key is None else ck[key]


# --- fixtures shared by the training / validation test files (imported there) ----------------------------------------
import shutil  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Each test module that imports a session fixture gets its own copy of it: memoize, so it is built once a session.
_SESSION: Dict[str, object] = {}


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    if 'data' not in _SESSION:
        from backbones.data import make_shapes_dataset
        _SESSION['data'] = make_shapes_dataset(tmp_path_factory.mktemp('data') / 'shapes', **TINY_DATA)
    return _SESSION['data']


@pytest.fixture(scope='session')
def tiny_run(tiny_data, tmp_path_factory):
    """A finished 2-epoch run with EMA: ``(run_dir, argv)``. Tests must not modify it."""
    if 'run' not in _SESSION:
        _SESSION['run'] = _make_tiny_run(tiny_data, tmp_path_factory)
    return _SESSION['run']


def _make_tiny_run(tiny_data, tmp_path_factory):
    from backbones.train import main
    out = tmp_path_factory.mktemp('runs')
    argv = tiny_argv(tiny_data, out, 'tiny', '--model-ema', '--model-ema-decay', '0.5', '--checkpoint-hist', '1')
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(n)
    return out / 'tiny', argv


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
