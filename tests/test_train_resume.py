"""A run killed with SIGKILL mid-epoch and resumed with --resume auto ends bit-identical to an uninterrupted run.

CPU, --workers 0, fixed seed; with the randomness that a resume must reproduce switched on: random-resized-crop /
flip / colour-jitter augmentation (python + torch RNGs), random erasing (torch RNG, in the prefetcher), mixup (numpy
RNG), drop-path (torch RNG), an EMA of the weights and a per-update cosine schedule.
"""
import signal
import subprocess
import sys
import time

import _train_common as common
import torch
from _train_common import (
    TRAIN,
    load_weights_only,
    subprocess_env,
    summary_rows,
    tiny_argv,
)

# fixtures shared by the training test files
tiny_data = common.tiny_data


EPOCHS = 3
EXTRA = ['--drop-path', '0.1', '--reprob', '0.25', '--mixup', '0.2', '--model-ema', '--model-ema-decay', '0.8',
         '--sched-on-updates', '--log-interval', '1']


def _argv(data, out, name):
    # batch 2: 20 steps per epoch, so that the kill lands well inside epoch 1
    return tiny_argv(data, out, name, *EXTRA, '--resume', 'auto', epochs=EPOCHS, batch=2)


def _run(argv):
    p = subprocess.run([sys.executable, TRAIN, *argv], env=subprocess_env(), capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _run_and_kill_mid_epoch(argv, epoch: int, step: int):
    """Start training; SIGKILL it once the progress line of ``step`` of ``epoch`` is out (the checkpoint of the
    previous epoch is then written)."""
    p = subprocess.Popen([sys.executable, TRAIN, *argv], env=subprocess_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, bufsize=1)
    marker = f'train {epoch} ({epoch + 1}/{EPOCHS}) [{step:>2d}/'
    lines = []
    deadline = time.time() + 150
    try:
        for line in p.stderr:
            lines.append(line)
            if marker in line:
                p.send_signal(signal.SIGKILL)
                break
            assert time.time() < deadline, 'training did not reach the kill point in time'
    finally:
        p.kill()
        p.wait()
    assert p.returncode == -signal.SIGKILL, ''.join(lines[-30:])
    return ''.join(lines)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tiny_data, tmp_path):
    full = _argv(tiny_data, tmp_path, 'full')
    _run(full)

    killed = _argv(tiny_data, tmp_path, 'killed')
    _run_and_kill_mid_epoch(killed, epoch=1, step=2)
    run_dir = tmp_path / 'killed'
    # the kill came mid-epoch 1: the last checkpoint is that of epoch 0, and nothing half-written is left behind
    assert load_weights_only(run_dir / 'last.pth.tar', 'epoch') == 0
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith('.') or p.name.startswith('tmp')]

    resumed = _run(killed)
    assert 'resumed from' in resumed.stderr and 'at epoch 1' in resumed.stderr

    a = load_weights_only(tmp_path / 'full' / 'last.pth.tar')
    b = load_weights_only(run_dir / 'last.pth.tar')
    assert a['epoch'] == b['epoch'] == EPOCHS - 1
    for key in ('state_dict', 'state_dict_ema'):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f'{key}.{k} differs after the resume'
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert sa.keys() == sb.keys()
    for i in sa:
        for name, v in sa[i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[i][name])), f'optimizer state {i}.{name}'
    # the logged numbers of every epoch agree too, and the summary holds each epoch once
    ra, rb = summary_rows(tmp_path / 'full'), summary_rows(run_dir)
    assert [r['epoch'] for r in rb] == ['0', '1', '2']
    assert ra == rb
