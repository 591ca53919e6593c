"""tools/validate.py: reproduces the top-1 training logged for a checkpoint (exactly), EMA handling, exported folders,
patterns into one results file, bad input."""
import csv
import json

import _train_common as common
import pytest
from _train_common import (
    VALIDATE,
    error_lines,
    load_weights_only,
    run_tool,
    summary_rows,
)

from backbones.train import validate_main

# fixtures shared by the training test files
tiny_data = common.tiny_data
tiny_run = common.tiny_run


def _validate(argv, tmp_path, name='r.json'):
    out = tmp_path / name
    assert validate_main([*argv, '-j', '0', '--device', 'cpu', '--results-file', str(out)]) == 0
    return json.loads(out.read_text()) if name.endswith('.json') else list(csv.DictReader(out.open()))


def test_reproduces_the_logged_top1_of_the_checkpoint(tiny_run, tiny_data, tmp_path, capsys, caplog, one_thread):
    run_dir, _ = tiny_run
    rows = summary_rows(run_dir)
    best = load_weights_only(run_dir / 'model_best.pth.tar')
    logged = rows[best['epoch']]
    # nothing but the checkpoint: model, model kwargs and eval transforms come from it; EMA weights when present
    caplog.set_level('INFO')
    [r] = _validate(['--data-dir', str(tiny_data), '--checkpoint', str(run_dir / 'model_best.pth.tar'), '-b', '8'],
                    tmp_path)
    assert 'EMA weights (state_dict_ema' in caplog.text
    assert r['ema'] is True and r['images'] == 30
    assert r['top1'] == float(logged['eval_ema_top1']) == best['metric']
    assert r['top5'] == float(logged['eval_ema_top5'])
    # --no-ema: the raw weights, which training logged as eval_top1
    [r] = _validate(['--data-dir', str(tiny_data), '--checkpoint', str(run_dir / 'model_best.pth.tar'), '-b', '8',
                     '--no-ema'], tmp_path)
    assert r['ema'] is False and r['top1'] == float(logged['eval_top1'])
    # the save_for_hf export of the best weights carries its eval transforms: the same number again
    [r] = _validate(['--data-dir', str(tiny_data), '--model', f'local-dir:{run_dir / "best"}', '-b', '8'], tmp_path)
    assert r['top1'] == best['metric']


def test_batch_size_does_not_change_the_count(tiny_run, tiny_data, tmp_path, one_thread):
    run_dir, _ = tiny_run
    ck = str(run_dir / 'last.pth.tar')
    [a] = _validate(['--data-dir', str(tiny_data), '--checkpoint', ck, '-b', '30', '--no-count'], tmp_path)
    [b] = _validate(['--data-dir', str(tiny_data), '--checkpoint', ck, '-b', '8', '--no-count'], tmp_path)
    assert a['images'] == b['images'] == 30
    assert a['top1'] * 30 / 100 == pytest.approx(round(a['top1'] * 30 / 100))  # a count, not an average of batches
    assert abs(a['top1'] - b['top1']) <= 100 / 30 + 1e-9


def test_pattern_evaluates_many_models_into_one_file(tiny_data, tmp_path, one_thread):
    rows = _validate(['--data-dir', str(tiny_data), '--model', 'rednet[23]*', '--num-classes', '10', '-b', '30',
                      '--img-size', '32'], tmp_path, 'all.csv')
    assert [r['model'] for r in rows] == ['rednet26', 'rednet38']
    for r in rows:
        assert float(r['params_m']) > 1 and float(r['gmacs']) > 0 and float(r['img_per_sec']) > 0
        assert 0 <= float(r['top1']) <= 100 and r['img_size'] == '32'
    import timm

    import backbones
    ref = backbones.count(timm.create_model('rednet26', num_classes=10, device='meta'), input_size=32)
    assert float(rows[0]['gmacs']) == pytest.approx(ref.gmacs, abs=1e-4)
    assert float(rows[0]['params_m']) == pytest.approx(ref.params / 1e6, abs=1e-4)


def test_bad_input_is_one_line(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    p = run_tool(VALIDATE, ['--checkpoint', str(tmp_path / 'nope.pth.tar'), '--device', 'cpu'])
    assert p.returncode == 2 and error_lines(p.stderr) == [f'error: checkpoint not found: {tmp_path / "nope.pth.tar"}']
    assert validate_main(['--model', 'rednet27', '--data-dir', str(tmp_path / 'missing')]) == 2
    assert validate_main(['--model', 'rednet26*', '--checkpoint', str(run_dir / 'last.pth.tar')]) == 2
