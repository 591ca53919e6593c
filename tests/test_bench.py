"""The benchmark library (backbones.bench, tools/benchmark.py): contenders, the table, parity; never timings."""
import copy
import dataclasses
import json
import os
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from _reduced import reduced_model

import backbones
from backbones.bench import (
    OFFICIAL_OPS,
    README_SUITE,
    SPEED_END,
    SPEED_START,
    BenchConfig,
    Contender,
    benchmark,
    build_contenders,
    check_readme_speed,
    merge_rows,
    random_timm_model,
    readme_speed_block,
    render_readme_speed,
    rows_from_dicts,
    rows_markdown,
    run_group,
    timm_twin,
)
from backbones.bench.runner import cpu_model
from backbones.layers import ConvNormAct

FAST = dict(rounds=1, warmup=0, batch=1)


def _pair():
    torch.manual_seed(0)
    ours = nn.Sequential(ConvNormAct(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    return ours, copy.deepcopy(ours)


def test_run_group_rows_and_table():
    ours, ref = _pair()
    with torch.no_grad():
        ref[3].bias.add_(0.5)  # a known output difference for the parity column
    contenders = [Contender('ours', ours, 'zoo'), Contender('ours fast', copy.deepcopy(ours), 'zoo+opt', train=False),
                  Contender('ref', ref, 'timm twin')]
    rows = run_group(contenders, 2, [torch.randn(2, 3, 16, 16)], BenchConfig(**FAST), group='g')
    assert [r.label for r in rows] == ['ours', 'ours fast', 'ref'] and [r.is_reference for r in rows] == [0, 0, 1]
    assert rows[0].max_abs_diff == pytest.approx(0.5) and rows[1].max_abs_diff == pytest.approx(0.5)
    assert rows[2].max_abs_diff is None and rows[2].speedup is None and rows[0].speedup > 0
    # fvcore's convention: conv 8*27 per pixel, eval BN 2 per element, average pool 1, linear 8*5
    assert rows[0].gmacs == pytest.approx((16 * 16 * 8 * (27 + 2 + 1) + 8 * 5) / 1e9)
    assert rows[0].peak_mb > 0 and rows[0].batch == 2 and rows[0].input_size == (3, 16, 16)
    table = rows_markdown(rows)
    lines = table.splitlines()
    assert lines[0].startswith('**inference, batch 2 @ 16x16, ') and 'median of 1 interleaved rounds' in lines[0]
    assert lines[2] == ('| model | ms / batch | img/s | peak MiB | GMACs / img | GFLOP/s | speed-up vs ref | '
                        'wall speed-up | max abs diff vs ref |')
    assert lines[4].startswith('| `ours` |') and lines[4].endswith('| 5.0e-01 |')
    assert '| ref |' in lines[6] and '**reference**' in lines[6]

    train = run_group(contenders, 2, [torch.randn(2, 3, 16, 16)], BenchConfig(mode='train', **FAST))
    assert [r.label for r in train] == ['ours', 'ref']  # the inference-only copy sits training out
    assert 'training step' in rows_markdown(train)


def test_twin_same_weights_and_official_op():
    cfg = BenchConfig(img_size=64, flops=False, memory=False, **FAST)
    rows = benchmark(['se_resnet50', 'rednet26'], cfg, optimized=False)
    assert [r.label for r in rows] == [
        'se_resnet50', f'timm {timm_twin("se_resnet50")[0]}', 'rednet26', OFFICIAL_OPS['involution'][0]]
    for r in rows:
        if not r.is_reference:  # same weights through checkpoint_filter_fn: the same logits
            assert r.max_abs_diff <= 1e-5 * max(1., r.ref_max_abs), r


def test_moat_official_op_sequence():
    """MOAT's reference runs the blocks op by op (separate BatchNorms, NCHW convs, explicit attention) on the same
    weights: the same logits, other code paths."""
    from backbones.layers.attention import Attention
    from backbones.layers.mbconv import MBConv
    contenders, ref = build_contenders('moat_0', optimized=False)
    assert [c.label for c in contenders] == ['moat_0', OFFICIAL_OPS['moat'][0]] and ref == 1
    official = contenders[1].model
    assert all(m.forward.__func__ is MBConv.forward_unfused for m in official.modules() if isinstance(m, MBConv))
    assert all(not m.fused_attn for m in official.modules() if isinstance(m, Attention))
    rows = run_group(contenders, ref, [torch.randn(1, 3, 64, 64)], BenchConfig(memory=False, flops=False, **FAST))
    assert rows[0].max_abs_diff <= 1e-5 * max(1., rows[0].ref_max_abs), rows[0]


def test_parcnetv2_official_op_is_the_stock_conv():
    """ParCNetV2's reference runs every oversized conv as the official code does (PyTorch's convs on NCHW maps): the
    same logits as the zoo's channels-last convs (inference) and Toeplitz matmuls (under autograd)."""
    from backbones.layers.oversize_conv import OversizeConv2d
    model = reduced_model('parcnetv2_xt')
    official = copy.deepcopy(model)
    assert OFFICIAL_OPS['parcnetv2'][1](official) == sum(isinstance(m, OversizeConv2d) for m in model.modules()) > 0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = official(x)
        assert (model(x) - ref).abs().max() <= 1e-5 * max(1., ref.abs().max())
    assert (model(x.requires_grad_()) - ref).abs().max() <= 1e-5 * max(1., ref.abs().max())


def test_any_timm_reference_and_errors():
    contenders, ref = build_contenders('rapidnet_ti', 'resnet18', optimized=False)
    assert ref == 1 and contenders[1].label == 'timm resnet18' and not contenders[1].same_weights
    rows = run_group(contenders, ref, [torch.randn(1, 3, 64, 64)], BenchConfig(memory=False, flops=False, **FAST))
    assert rows[0].max_abs_diff is None and rows[0].speedup > 0  # other weights: no parity to report
    assert rows_markdown(rows).splitlines()[4].endswith('| — |')
    with pytest.raises(ValueError, match='no timm twin'):
        build_contenders('rapidnet_ti', 'twin')
    with pytest.raises(ValueError, match='no official-operator reference'):
        build_contenders('sknet50', 'official')
    with pytest.raises(ValueError, match='mode'):
        BenchConfig(mode='fast')


def test_twin_buffers_are_built():
    """Computed buffers outside the state dict (MaxViT-TF's one-hot relative-position lookups) are rebuilt after
    ``to_empty``, not left as uninitialised memory."""
    twin = random_timm_model(timm_twin('maxvit_tiny')[0])
    lookups = [b for n, b in twin.named_buffers() if n.endswith('_lookup')]
    assert lookups and all(set(b.unique().tolist()) <= {0., 1.} for b in lookups)


def test_merge_rows_and_json():
    """--update: re-measured groups replace their stored rows in place, new groups join their table, JSON round trip."""
    ours, ref = _pair()
    cfg = BenchConfig(memory=False, flops=False, **FAST)
    x = [torch.randn(1, 3, 16, 16)]
    old = run_group([Contender('a', ours, 'zoo'), Contender('r', ref, 'timm twin')], 1, x, cfg, group='a') + \
        run_group([Contender('b', ours, 'zoo'), Contender('r', ref, 'timm twin')], 1, x, cfg, group='b')
    old = rows_from_dicts(json.loads(json.dumps([asdict(r) for r in old])))
    assert old[0].input_size == (3, 16, 16) and old[0].when
    new = run_group([Contender('a', ours, 'zoo'), Contender('r', ref, 'timm twin')], 1, x, cfg, group='a') + \
        run_group([Contender('c', ours, 'zoo'), Contender('r', ref, 'timm twin')], 1, x, cfg, group='c')
    merged = merge_rows(old, new)
    assert [(r.group, r.label) for r in merged] == [('a', 'a'), ('a', 'r'), ('b', 'b'), ('b', 'r'), ('c', 'c'),
                                                    ('c', 'r')]
    assert merged[0] is new[0] and merged[2] is old[2]
    in_order = merge_rows(old, new, order=['a', 'c', 'b'])  # a new group goes where the suite puts it
    assert [(r.group, r.label) for r in in_order] == [('a', 'a'), ('a', 'r'), ('c', 'c'), ('c', 'r'), ('b', 'b'),
                                                      ('b', 'r')]


def test_twin_registry():
    """The benchmark's timm twin is the one the variant registers, with its kwargs; a model without one has none."""
    info = backbones.get_variant_info('davit_l')
    assert timm_twin('davit_l') == (info.timm_twin, info.timm_twin_kwargs) and info.timm_twin_kwargs
    assert timm_twin('rapidnet_ti') is None


def test_readme_markers():
    text = f'intro\n{SPEED_START}\nold\n{SPEED_END}\nrest\n'
    assert render_readme_speed(text, 'new table') == f'intro\n{SPEED_START}\n\nnew table\n\n{SPEED_END}\nrest\n'
    with pytest.raises(ValueError, match='speed-table markers'):
        render_readme_speed('no markers', 'x')


def test_readme_block_round_trip():
    """What the tool writes passes the README check; a hand-edited line does not."""
    ours, ref = _pair()
    rows = run_group([Contender('ours', ours, 'zoo'), Contender('ref', ref, 'timm twin')], 1,
                     [torch.randn(1, 3, 16, 16)], BenchConfig(memory=False, **FAST), group='g')
    block = readme_speed_block(rows, 'python tools/benchmark.py --markdown --threads 1', 'some CPU', ['a note'],
                               when=datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc))
    assert block.startswith('Measured 2026-01-02 03:04 UTC with `python tools/benchmark.py --markdown --threads 1` '
                            'on: some CPU; 1-minute load average ')  # each group's load, as it finished
    text = render_readme_speed(f'intro\n{SPEED_START}\n{SPEED_END}\n', block)
    cells = check_readme_speed(text)
    assert [c[0] for c in cells] == ['`ours`', 'ref'] and cells[1][6] == '**reference**'
    for old, new in (('**reference**', 'reference'), ('| ms / batch |', '| ms |'), ('Measured 2026', 'Run 2026'),
                     ('- a note', 'a note')):
        with pytest.raises(ValueError, match='README speed block, line'):
            check_readme_speed(text.replace(old, new))



def test_readme_block_says_when_groups_ran_on_other_cpus():
    """Each row records its CPU; a table whose groups ran on different CPUs says so (an --update on another machine),
    one that ran on one CPU does not."""
    ours, ref = _pair()
    rows = run_group([Contender('ours', ours, 'zoo'), Contender('ref', ref, 'timm twin')], 1,
                     [torch.randn(1, 3, 16, 16)], BenchConfig(memory=False, **FAST), group='g')
    assert {r.cpu for r in rows} == {cpu_model()} and cpu_model()
    assert 'different CPUs' not in readme_speed_block(rows, 'python tools/benchmark.py --markdown', 'some CPU')
    old = [dataclasses.replace(r, group='h', cpu='') for r in rows]
    block = readme_speed_block(old + rows, 'python tools/benchmark.py --markdown', 'some CPU')
    assert f'times compare within a group only (not recorded: h; {cpu_model()}: g)' in block


TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'benchmark.py'


@pytest.fixture(scope='module')
def tool():
    """tools/benchmark.py as a module (its main runs in this process)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('benchmark_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_markdown_store_and_update(tool, tmp_path):
    """tools/benchmark.py --markdown writes README's block and the stored rows; --update re-measures one group."""
    readme, store = tmp_path / 'README.md', tmp_path / 'speed.json'
    readme.write_text(f'# x\n{SPEED_START}\n{SPEED_END}\n')
    fast = ['--ref', 'none', '--batch', '1', '--img-size', '64', '--rounds', '1', '--warmup', '0', '--no-memory',
            '--no-flops', '--readme', str(readme), '--store', str(store)]
    assert tool.main(['--markdown', '--models', 'rapidnet_ti', 'rednet26', *fast]) == 0
    first = json.loads(store.read_text())
    assert tool.main(['--markdown', '--update', '--models', 'rednet26', *fast]) == 0
    second = json.loads(store.read_text())
    assert [(r['group'], r['label']) for r in second] == [(r['group'], r['label']) for r in first]
    assert second[0] == first[0] and second[2]['times'] != first[2]['times']  # rapidnet kept, rednet re-measured
    cells = check_readme_speed(readme.read_text())
    assert [c[0] for c in cells] == ['`rapidnet_ti`', 'rapidnet_ti + optimize_for_inference', '`rednet26`',
                                     'rednet26 + optimize_for_inference']


def test_readme_speed_table_is_the_tools_format():
    """README's speed block is the tool's output (format only, never timings) and covers the whole README suite."""
    readme = (Path(__file__).resolve().parents[1] / 'README.md').read_text()
    zoo_rows = {c[0].strip('`') for c in check_readme_speed(readme) if c[0].startswith('`')}
    missing = {name for name, _ in README_SUITE} - zoo_rows
    assert not missing, f'README speed table lacks {sorted(missing)}: run python tools/benchmark.py --markdown'
    stored = rows_from_dicts(json.loads((Path(__file__).resolve().parents[1] / 'benchmarks/speed.json').read_text()))
    assert rows_markdown(stored).strip() in readme  # the table renders the stored rows, nothing edited by hand


@pytest.mark.parametrize('argv,needle', [
    (['--models', 'rednet27'], "'rednet27' is not a zoo model (did you mean rednet26"),
    (['--models', 'rednet26', '--threads', '-2'], '--threads -2: expected a whole number >= 1'),
    (['--models', 'rednet26', '--threads', '1', '0'], '--threads 0: expected a whole number >= 1'),  # measured nothing
    (['--models', 'rednet26', '--device', 'cuda:99'], "device 'cuda:99': this machine has "),
    (['--models', 'rednet26', '--device', 'gpu0'], "'gpu0' is not a torch device"),
    (['--models', 'rednet26', '--batch', '0'], '--batch 0: expected a whole number >= 1'),
    (['--models', 'rednet26', '--rounds', '0'], '--rounds 0: expected a whole number >= 1'),
    (['--models', 'rednet26', '--ref', 'resnet5O'], "reference 'resnet5O' is not auto, twin, official, none or a timm"),
    (['--models', 'rednet26', '--ref', 'twin'], 'rednet26 has no timm twin'),
    (['--models', 'se_resnet50', 'crossvit_tiny', '--img-size', '64'],
     'crossvit_tiny cannot take 64x64 inputs: CrossViT takes input sides that are multiples of 12'),
    (['--models', 'rednet26', '--img-size', '0'], '--img-size 0: expected a whole number >= 1'),
    ([], 'give --models (or --markdown for the README suite)'),
])
def test_tool_checks_every_argument_before_measuring(tool, argv, needle, capsys, monkeypatch):
    """Each bad argument is one ``error:`` line and exit status 2, before anything is built or measured."""
    monkeypatch.setattr(tool, 'benchmark', lambda *a, **k: pytest.fail('measured despite a bad argument'))
    with pytest.raises(SystemExit) as stopped:  # argparse's exit, as every tool's bad argument
        tool.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and needle in err, err


def test_memory_pass_prints_no_device_error_lines(monkeypatch):
    """tools/benchmark.py's peak-memory pass (the torch profiler) prints nothing, in particular no "ERROR: ...
    gpuGetDeviceCount failed" from the profiler's library (kineto) on a machine without a GPU (the test machine):
    ``peak_memory_mb`` sets kineto's log level before the profiler starts, and at that level a fresh process that
    imported torch first, as the tool does, profiles without a line on stderr."""
    import subprocess
    import sys

    from backbones.bench import runner
    monkeypatch.delenv('KINETO_LOG_LEVEL', raising=False)
    assert runner.peak_memory_mb(lambda: torch.ones(64, 64) @ torch.ones(64, 64), torch.device('cpu')) > 0
    level = os.environ['KINETO_LOG_LEVEL']
    assert level == str(runner._KINETO_SILENT)
    code = ('import os, torch; from torch.profiler import ProfilerActivity, profile; '
            f'os.environ.setdefault("KINETO_LOG_LEVEL", "{level}"); '
            'p = profile(activities=[ProfilerActivity.CPU], profile_memory=True); p.start(); torch.ones(8) + 1; '
            'p.stop(); print(len(p.events()))')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('KINETO_LOG_LEVEL')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and int(out.stdout) > 0, out.stderr  # the profiler did record
    assert out.stderr == '', out.stderr
