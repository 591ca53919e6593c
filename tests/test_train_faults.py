"""Training runs lose nothing: a full disk, any other failure to save and Ctrl-C end with one line naming the last
good epoch and the command that continues; summary.csv never lists an epoch without a checkpoint; a killed run's
temporaries go on the next start; a fresh run never mixes its files with an earlier run's; one run at a time owns a
directory (a lock: a second writer is refused, a dead run's lock is taken over); a run that saved nothing leaves
nothing it created."""
import errno
import json
import os
import shlex
import shutil
import socket

import _train_common as common
import pytest
import torch
from _train_common import error_lines, load_weights_only, snapshot, summary_rows, tiny_argv

import backbones.train.loop as loop
from backbones.train import main

tiny_data = common.tiny_data
tiny_run = common.tiny_run


def _stopped(argv, capsys, code):
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def _continue(line):
    """The command the error line prints, run in-process."""
    cmd = shlex.split(line.split('continue with: ', 1)[1])
    assert cmd[:2] == ['python', 'tools/train.py'] and cmd[-2:] == ['--resume', 'auto']
    return main(cmd[2:])


def _hidden(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob('*') if p.name.startswith('.')
                  or p.name == 'tmp.pth.tar')


def test_full_disk_names_the_last_good_epoch_and_resume_continues(tiny_data, tmp_path, capsys, monkeypatch,
                                                                   one_thread):
    real_save, calls = torch.save, []

    def save_then_fill_the_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 1's checkpoint: half written, then the disk is full
            f.write(b'partial')
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', save_then_fill_the_disk)
    run_dir = tmp_path / 'run'
    line = _stopped(tiny_argv(tiny_data, tmp_path, 'run', epochs=3), capsys, 2)
    monkeypatch.undo()
    assert 'no space left on device in epoch 1: the last good checkpoint is epoch 0' in line
    assert str(run_dir / 'last.pth.tar') in line and 'free some space, then continue with: ' in line
    assert [int(r['epoch']) for r in summary_rows(run_dir)] == [0]  # epoch 1 trained, but has no checkpoint
    assert load_weights_only(run_dir / 'last.pth.tar', 'epoch') == 0
    assert _hidden(run_dir) == []
    # temporaries a killed process left behind go on the next start
    (run_dir / '.last.pth.tar.tmp-999999999-deadbeef').write_bytes(b'x')
    (run_dir / 'tmp.pth.tar').write_bytes(b'x')
    (run_dir / 'best' / '.model.safetensors.tmp-999999999-0badf00d').write_bytes(b'x')
    assert _continue(line) == 0
    assert [int(r['epoch']) for r in summary_rows(run_dir)] == [0, 1, 2]
    assert _hidden(run_dir) == []


def test_ctrl_c_names_the_last_good_epoch(tiny_data, tmp_path, capsys, monkeypatch, one_thread):
    real = loop.train_one_epoch

    def interrupted_in_epoch_1(epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(epoch, *args, **kwargs)

    monkeypatch.setattr(loop, 'train_one_epoch', interrupted_in_epoch_1)
    line = _stopped(tiny_argv(tiny_data, tmp_path, 'run'), capsys, 130)
    assert 'interrupted (Ctrl-C) in epoch 1: the last good checkpoint is epoch 0' in line
    assert '--resume auto' in line and _hidden(tmp_path / 'run') == []
    assert [int(r['epoch']) for r in summary_rows(tmp_path / 'run')] == [0]


def test_ctrl_c_before_the_first_checkpoint_leaves_an_earlier_run_alone(tiny_run, tiny_data, tmp_path, capsys,
                                                                         monkeypatch, one_thread):
    out = tmp_path / 'out'
    shutil.copytree(tiny_run[0], out / 'exp')
    before = snapshot(out)
    monkeypatch.setattr(loop, 'train_one_epoch', lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    line = _stopped(tiny_argv(tiny_data, out, 'exp'), capsys, 130)
    assert 'interrupted (Ctrl-C) in epoch 0, before the first checkpoint: nothing was saved' in line
    assert snapshot(out) == before


def test_fresh_run_moves_an_earlier_run_aside_whole(tiny_run, tiny_data, tmp_path, caplog, one_thread):
    out = tmp_path / 'out'
    shutil.copytree(tiny_run[0], out / 'exp')
    (out / 'exp' / 'checkpoint-7.pth.tar').write_bytes((out / 'exp' / 'last.pth.tar').read_bytes())
    before = snapshot(out / 'exp')
    assert main(tiny_argv(tiny_data, out, 'exp', epochs=1)) == 0
    aside = [p for p in out.iterdir() if p.name.startswith('exp.earlier-')]
    assert len(aside) == 1 and snapshot(aside[0]) == before  # nothing of the earlier run lost ...
    assert f'moved it to {aside[0]}' in caplog.text
    new = snapshot(out / 'exp')  # ... and nothing of it mixed into the new one
    assert 'checkpoint-7.pth.tar' not in new and 'checkpoint-0.pth.tar' in new
    assert [int(r['epoch']) for r in summary_rows(out / 'exp')] == [0]


# --------------------------------------------------------------------------------- one run owns its directory

def test_a_second_run_into_a_live_run_is_refused_and_moves_nothing(tiny_data, tmp_path, capsys, monkeypatch,
                                                                     one_thread):
    """Run 2 starts into run 1's directory while run 1 is in its second epoch: refused in one line naming run 1's
    process and the lock; run 1 goes on, and its directory holds run 1's files only."""
    real, second = loop.train_one_epoch, []
    argv1 = tiny_argv(tiny_data, tmp_path, 'exp')

    def start_run_2_in_epoch_1(epoch, *args, **kwargs):
        if epoch == 1 and not second:
            second.append(main(tiny_argv(tiny_data, tmp_path, 'exp', '--lr', '1e-3')))
            second.append(capsys.readouterr().err)
        return real(epoch, *args, **kwargs)

    monkeypatch.setattr(loop, 'train_one_epoch', start_run_2_in_epoch_1)
    assert main(argv1) == 0
    code, err = second
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    assert f'{tmp_path / "exp"} is in use by process {os.getpid()} on {socket.gethostname()}' in lines[0]
    assert str(tmp_path / 'exp.lock') in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['exp']  # nothing moved aside, the lock gone at the end
    assert "lr: 0.002" in (tmp_path / 'exp' / 'args.yaml').read_text()  # run 1's arguments, not run 2's
    assert [int(r['epoch']) for r in summary_rows(tmp_path / 'exp')] == [0, 1]


def test_a_lock_left_by_a_dead_process_is_said_and_taken_over(tiny_data, tmp_path, caplog, one_thread):
    lock = tmp_path / 'exp.lock'
    lock.write_text(json.dumps({'pid': 999999999, 'host': socket.gethostname(), 'started': '2024-01-01T00:00:00'}))
    assert main(tiny_argv(tiny_data, tmp_path, 'exp', epochs=1)) == 0
    assert 'took over the lock of process 999999999' in caplog.text and 'no longer runs' in caplog.text
    assert not lock.exists() and (tmp_path / 'exp' / 'last.pth.tar').is_file()


def test_the_lock_is_atomic_and_names_its_owner(tmp_path):
    """The lock's own rules, without training: one holder; another host's lock (unverifiable) is held; a dead
    process's is stale; only the holder releases it."""
    from backbones._files import LockHeldError, acquire_lock, release_lock
    lock = tmp_path / 'exp.lock'
    assert acquire_lock(lock) is None
    assert json.loads(lock.read_text())['pid'] == os.getpid()
    with pytest.raises(LockHeldError, match=f'held by process {os.getpid()}'):
        acquire_lock(lock)
    release_lock(lock)
    assert not lock.exists()
    lock.write_text(json.dumps({'pid': 1, 'host': 'elsewhere', 'started': 'x'}))
    with pytest.raises(LockHeldError, match='process 1 on elsewhere'):
        acquire_lock(lock)
    release_lock(lock)  # not ours: stays
    assert lock.exists()
    lock.write_text('')  # a lock without content: its writer died before writing it
    assert acquire_lock(lock) == {'pid': '?', 'host': '?', 'started': '?'}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['exp.lock']  # no temporaries left


# --------------------------------------------------------------------------------- save-time failures, leftovers

def test_a_save_failure_of_any_kind_names_the_last_good_epoch(tiny_data, tmp_path, capsys, monkeypatch,
                                                                one_thread):
    """What torch.save raises on a full disk (a RuntimeError from its zip writer, not an OSError) ends like Ctrl-C."""
    real_save, calls = torch.save, []

    def save_then_fail(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 1's checkpoint
            raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4096')
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', save_then_fail)
    line = _stopped(tiny_argv(tiny_data, tmp_path, 'run'), capsys, 2)
    assert line.startswith('error: the checkpoint could not be written (torch.save: [enforce fail'), line
    assert ' in epoch 1: the last good checkpoint is epoch 0' in line
    assert 'free some space, then continue with: ' in line
    assert line.endswith('--resume auto') and load_weights_only(tmp_path / 'run' / 'last.pth.tar', 'epoch') == 0
    assert _hidden(tmp_path / 'run') == [] and not (tmp_path / 'run.lock').exists()


@pytest.mark.parametrize('error,why,then', [
    (OSError(errno.ENOSPC, 'No space left on device', 'x.pth.tar'), 'no space left on device writing x.pth.tar',
     'free some space, then '),
    (OSError(errno.EFBIG, 'File too large'), 'file too large (the file system or the file-size limit, ulimit -f)',
     'raise the limit or use another --output, then '),
    (OSError(errno.EROFS, 'Read-only file system'), 'the file system is read-only', 'make it writable, then '),
    (OSError(errno.EACCES, 'Permission denied', 'x'), 'permission denied writing x', 'fix the permissions, then '),
    (ValueError('odd'), 'saving failed (ValueError: odd)', 'fix the cause, then '),
])
def test_save_failures_in_words(error, why, then):
    assert loop._save_failure(error) == (why, then)


@pytest.mark.parametrize('failure', ['ctrl-c', 'training error', 'disk full at the first save'])
def test_a_run_that_saved_nothing_leaves_nothing(failure, tiny_data, tmp_path, capsys, monkeypatch, one_thread):
    """Nothing the run created stays: not its directory, not the output folder it made, not its lock."""
    out = tmp_path / 'out' / 'deeper'
    if failure == 'disk full at the first save':
        monkeypatch.setattr(torch, 'save', lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, 'full')))
    else:
        error = KeyboardInterrupt if failure == 'ctrl-c' else RuntimeError('Expected more than 1 value per channel')
        monkeypatch.setattr(loop, 'train_one_epoch', lambda *a, **k: (_ for _ in ()).throw(error))
    assert main(tiny_argv(tiny_data, out, 'exp')) in (1, 2, 130)
    assert len(error_lines(capsys.readouterr().err)) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_failed_first_save_puts_an_earlier_run_back(tiny_run, tiny_data, tmp_path, capsys, monkeypatch,
                                                      one_thread):
    out = tmp_path / 'out'
    shutil.copytree(tiny_run[0], out / 'exp')
    before = snapshot(out)
    monkeypatch.setattr(torch, 'save', lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, 'full')))
    line = _stopped(tiny_argv(tiny_data, out, 'exp'), capsys, 2)
    assert 'no space left on device in epoch 0, before the first checkpoint: nothing was saved' in line
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ['exp']
