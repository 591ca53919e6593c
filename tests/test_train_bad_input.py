"""Bad input to tools/train.py: one clear line naming the problem, exit status 2, and an output directory that already
holds a run is left exactly as it was. Out-of-range arguments and a size the model cannot take fail before anything
is read or written."""
import shutil

import _train_common as common
import pytest
import yaml
from _train_common import (
    TINY_MODEL,
    TRAIN,
    copy_dataset,
    error_lines,
    run_tool,
    snapshot,
    tiny_argv,
)

from backbones.train import main

# fixtures shared by the training test files
tiny_data = common.tiny_data
tiny_run = common.tiny_run


@pytest.fixture
def earlier_run(tiny_run, tmp_path):
    """An output directory holding a finished run (the session's tiny run, copied): ``(output, experiment)``."""
    out = tmp_path / 'out'
    shutil.copytree(tiny_run[0], out / 'exp')
    return out, 'exp'


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert '\n' not in lines[0] and 'Traceback' not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_missing_data_dir(earlier_run, tmp_path, capsys):
    out, exp = earlier_run
    before = snapshot(out)
    _fails(tiny_argv(tmp_path / 'nope', out, exp), capsys, 'data dir not found', str(tmp_path / 'nope'))
    assert snapshot(out) == before


def test_empty_class_folder(earlier_run, tiny_data, tmp_path, capsys):
    out, exp = earlier_run
    data = copy_dataset(tiny_data, tmp_path / 'data')
    (data / 'train' / 'zebra').mkdir()
    before = snapshot(out)
    _fails(tiny_argv(data, out, exp), capsys, 'empty class folder', str(data / 'train' / 'zebra'))
    assert snapshot(out) == before


def test_corrupt_image(earlier_run, tiny_data, tmp_path, capsys, one_thread):
    out, exp = earlier_run
    data = copy_dataset(tiny_data, tmp_path / 'data')
    bad = data / 'train' / 'star' / 'star_00001.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n this is not an image')
    before = snapshot(out)
    # a fresh run into the directory of the earlier one: it fails in its first epoch, before its first checkpoint
    _fails(tiny_argv(data, out, exp), capsys, 'cannot read image', str(bad))
    assert snapshot(out) == before


def test_a_corrupt_image_found_in_the_first_epoch_leaves_nothing(tiny_data, tmp_path, capsys, one_thread):
    """Into a fresh output folder: the run fails before its first checkpoint, and nothing it created stays (no run
    directory holding only args.yaml, no output folder, no lock)."""
    data = copy_dataset(tiny_data, tmp_path / 'data')
    (data / 'train' / 'star' / 'star_00001.png').write_bytes(b'\x89PNG\r\n\x1a\n this is not an image')
    _fails(tiny_argv(data, tmp_path / 'out', 'exp'), capsys, 'cannot read image')
    assert not (tmp_path / 'out').exists()


def test_images_not_in_class_folders(tiny_data, tmp_path, capsys):
    """A split whose images lie directly in it (no class folders) would train a 1-class model to 100 % top-1."""
    data = copy_dataset(tiny_data, tmp_path / 'data')
    for split in ('train', 'val'):
        for image in list((data / split).glob('*/*.png')):
            image.rename(data / split / f'{image.parent.name}_{image.name}')
        for folder in [p for p in (data / split).iterdir() if p.is_dir()]:
            folder.rmdir()
    _fails(tiny_argv(data, tmp_path / 'out', 'exp'), capsys, f'lie directly in {data / "train"} (train split, e.g. ',
           'not in class folders', f'expected {data / "train"}/<class name>/<image files>')
    assert not (tmp_path / 'out').exists()


def test_config_for_a_model_that_does_not_exist(earlier_run, tiny_data, tmp_path, capsys):
    out, exp = earlier_run
    cfg = tmp_path / 'cfg.yaml'
    cfg.write_text(yaml.safe_dump({'model': 'rednet27', 'epochs': 2}))
    before = snapshot(out)
    _fails(['-c', str(cfg), '--data-dir', str(tiny_data), '--output', str(out), '--experiment', exp], capsys,
           "'rednet27'", 'rednet26')
    argv = tiny_argv(tiny_data, out, exp)
    argv[argv.index('rednet26')] = 'rednet27'
    _fails(argv, capsys, "unknown model 'rednet27'", 'rednet26')
    assert snapshot(out) == before


def test_resume_from_a_checkpoint_of_another_model(earlier_run, tiny_data, tmp_path, capsys):
    out, exp = earlier_run
    before = snapshot(out)
    last = out / exp / 'last.pth.tar'
    argv = tiny_argv(tiny_data, out, exp, '--resume', str(last))
    i = argv.index('rednet26')
    other = argv[:i] + ['se_resnet50', '--model-kwargs', 'widths=(32,32,64,64)', 'depths=(1,1,1,1)'] + \
        argv[i + 1 + len(TINY_MODEL) - 2:]
    _fails(other, capsys, str(last), "model 'rednet26'", "trains 'se_resnet50'")
    # --resume auto in that directory with another model: the same
    other_auto = [a if a != str(last) else 'auto' for a in other]
    _fails(other_auto, capsys, "model 'rednet26'", "trains 'se_resnet50'")
    # the same architecture built differently: the weights do not fit, and the line says so
    wider = [a if a != 'widths=(32,32,64,64)' else 'widths=(32,32,64,128)' for a in argv]
    _fails(wider, capsys, 'do not fit rednet26', '--model-kwargs')
    assert snapshot(out) == before


def test_the_script_prints_one_line(tmp_path):
    p = run_tool(TRAIN, tiny_argv(tmp_path / 'missing', tmp_path / 'out', 'x'))
    assert p.returncode == 2
    assert error_lines(p.stderr) == [f'error: data dir not found: {tmp_path / "missing"}']
    assert 'Traceback' not in p.stderr
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('flags,needle', [
    (['--epochs', '0'], '--epochs 0: expected a whole number >= 1'),
    (['-b', '0'], '-b/--batch-size 0: expected a whole number >= 1'),
    (['--lr', '-0.1'], '--lr -0.1: expected a number > 0'),
    (['--lr', 'nan'], '--lr nan: expected a finite number'),
    (['-j', '-1'], '-j/--workers -1: expected a whole number >= 0'),
    (['--drop-path', '1.0'], '--drop-path 1.0: expected 0.0 <= value < 1.0'),
    (['--img-size', '20'], '--img-size 20: rednet26 cannot take 3x20x20 inputs: RedNet needs'),
    (['--model-kwargs', 'no_such_arg=1'], "unexpected keyword argument 'no_such_arg'"),
])
def test_bad_arguments_fail_before_anything_is_written(earlier_run, tiny_data, tmp_path, capsys, flags, needle):
    out, exp = earlier_run
    before = snapshot(out)
    for experiment in (exp, 'fresh'):  # over an earlier run, and into a new directory
        _fails(tiny_argv(tiny_data, out, experiment) + flags, capsys, needle)  # the last flag wins
    assert snapshot(out) == before and not (out / 'fresh').exists()
