"""torchrun with 2 processes on CPU (gloo): DDP trains on sharded data, reduces its metrics over the ranks, only rank 0
writes, and the run checkpoints and resumes."""
import subprocess
import sys

import _train_common as common
import torch
from _train_common import (
    ROOT,
    TRAIN,
    copy_dataset,
    free_port,
    load_weights_only,
    subprocess_env,
    summary_rows,
    tiny_argv,
)

# fixtures shared by the training test files
tiny_data = common.tiny_data


def _torchrun(argv):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', '2',
           '--master_addr', '127.0.0.1', '--master_port', str(free_port()), TRAIN, *argv]
    p = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=240, cwd=str(ROOT))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p.stderr + p.stdout


def test_two_processes_train_checkpoint_and_resume(tiny_data, tmp_path, one_thread):
    data = copy_dataset(tiny_data, tmp_path / 'data')
    (data / 'val' / 'vbars' / 'vbars_00002.png').unlink()  # 29 images: rank 1 gets a padding sample to leave out
    out = tmp_path / 'out'
    log = _torchrun(tiny_argv(data, out, 'ddp', '--resume', 'auto', epochs=1, batch=4))
    run_dir = out / 'ddp'
    assert 'distributed: 2 processes (gloo)' in log
    assert '1 epochs of 5 steps' in log  # 40 images sharded over 2 ranks, batch 4 per rank
    ck = load_weights_only(run_dir / 'last.pth.tar')
    assert ck['epoch'] == 0 and ck['args']['world_size'] == 2 and ck['args']['distributed']
    assert ck['rng']['world_size'] == 2 and len(ck['rng']['ranks']) == 2
    assert not torch.equal(ck['rng']['ranks'][0]['torch'], ck['rng']['ranks'][1]['torch'])  # per-rank states
    assert [r['epoch'] for r in summary_rows(run_dir)] == ['0']  # written once, by rank 0

    first = ck['state_dict']

    log = _torchrun(tiny_argv(data, out, 'ddp', '--resume', 'auto', epochs=2, batch=4))
    assert 'resumed from' in log
    rows = summary_rows(run_dir)
    assert [r['epoch'] for r in rows] == ['0', '1']
    ck = load_weights_only(run_dir / 'last.pth.tar')
    assert ck['epoch'] == 1
    assert float(rows[1]['lr']) > 0  # the longer schedule applies after the resume
    assert not torch.equal(first['head.fc.weight'], ck['state_dict']['head.fc.weight'])  # it trained on

    # the logged top-1 is that of the whole validation set: one process evaluating the checkpoint gets it exactly
    import timm
    from timm.data import create_dataset, resolve_data_config

    from backbones.train.data import create_eval_loader
    from backbones.train.validate import evaluate
    model = timm.create_model('rednet26', num_classes=10, **ck['args']['model_kwargs'])
    model.load_state_dict(ck['state_dict'])
    cfg = resolve_data_config(ck['args'], model=model)
    ds = create_dataset('', root=str(data), split='validation')
    m = evaluate(model, create_eval_loader(ds, cfg, 8, 0, torch.device('cpu')), torch.device('cpu'))
    assert m['count'] == 29
    assert float(rows[1]['eval_top1']) == m['top1']
    assert abs(float(rows[1]['eval_loss']) - m['loss']) < 1e-5
