"""Training runs lose nothing: a full disk and Ctrl-C end with one line naming the last good epoch and the command
that continues; summary.csv never lists an epoch without a checkpoint; a killed run's temporaries go on the next
start; a fresh run never mixes its files with an earlier run's."""
import errno
import shlex
import shutil

import _train_common as common
import torch
from _train_common import error_lines, load_weights_only, snapshot, summary_rows, tiny_argv

import backbones.train.loop as loop
from backbones.train import main

one_thread = common.one_thread
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
