#!/usr/bin/env python
"""Int8 on the CPU: speed and agreement with float of torch.ao's dynamic and FX static quantization.

    python tools/bench_int8.py                                  # every family's smallest variant (README's table)
    python tools/bench_int8.py --models rednet26 sknet50 --json int8.json
    python tools/bench_int8.py --rows int8.json --markdown             # (re)write README's int8 table from a run

Each model is the full-size network at its default input size with random non-trivial weights (``redraw_``;
BatchNorm statistics from the calibration images). Three versions of it:

- float32, eager;
- int8 dynamic: ``quantize_dynamic(model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)`` (int8 weights, activations
  quantized on the fly per batch);
- int8 static (FX): ``prepare_fx`` with torch's default x86 configuration (histogram observers), a calibration pass
  over ``--calib-images`` images, ``convert_fx``.

Images are the built-in shapes dataset's (``backbones.data``: real drawings, 64 px, resized to the model's size):
calibration from its training split, the comparison on ``--images`` held-out ones: the int8 model's top-1 and top-5
agreement with float (how often it picks float's class; in float's top 5), the largest and mean absolute logit
difference, and the relative L2 error of the logits. Without trained weights no accuracy can be measured, and a
random network's classes are close calls (logits of similar size), so agreement understates what a trained model
keeps. Speed: the three versions interleaved on one batch by ``backbones.bench.run_group`` (process CPU time; the
median over rounds of float time / int8 time from the same round, so a busy machine slows all alike).

A quantization that fails is reported with its error in the table instead of numbers.
"""
import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
INT8_START, INT8_END = '<!-- int8-table:start -->', '<!-- int8-table:end -->'
sys.path.insert(0, str(ROOT))

import backbones  # noqa: E402, F401  (registers the zoo)
from backbones._cli import one_line  # noqa: E402
from backbones._registry import _VARIANTS  # noqa: E402
from backbones.bench import BenchConfig, Contender, calibrate_bn_, machine_summary, random_timm_model, run_group  # noqa: E402


def smallest_per_family() -> List[str]:
    families = {info.family for info in _VARIANTS.values()}
    return sorted(min((n for n, i in _VARIANTS.items() if i.family == f), key=lambda n: _VARIANTS[n].params)
                  for f in families)


def quantize_dynamic(model: nn.Module) -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)


@torch.no_grad()
def quantize_static(model: nn.Module, calibration: List[torch.Tensor]) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping('x86'), (calibration[0],))
    for x in calibration:
        prepared(x)
    return convert_fx(prepared)


def _try(fn: Callable[[], nn.Module]) -> Tuple[Optional[nn.Module], Optional[str]]:
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - a failed quantization is a result to report
        return None, f'{type(e).__name__}: {one_line(e)}'


def _load_split(root: Path, split: str, count: int) -> torch.Tensor:
    """``count`` images of a split, the classes interleaved, as a float batch in [-1, 1]."""
    import numpy as np
    from PIL import Image
    per_class = [sorted(p.iterdir()) for p in sorted((root / split).iterdir()) if p.is_dir()]
    paths = [paths[i] for i in range(max(map(len, per_class))) for paths in per_class if i < len(paths)][:count]
    x = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in paths])
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def shapes_images(calib: int, held_out: int) -> Tuple[torch.Tensor, torch.Tensor]:
    from backbones.data import make_shapes_dataset
    from backbones.train.data import EMBEDDED_DATASET
    root = Path(make_shapes_dataset(**EMBEDDED_DATASET))
    return _load_split(root, 'train', calib), _load_split(root, 'val', held_out)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def agreement(q: torch.Tensor, ref: torch.Tensor) -> Dict[str, float]:
    top1 = ref.argmax(1)
    diff = (q - ref).abs()
    return dict(agree_top1=(q.argmax(1) == top1).float().mean().item(),
                in_top5=(q.topk(5, 1).indices == top1[:, None]).any(1).float().mean().item(),
                max_dlogit=diff.max().item(), mean_dlogit=diff.mean().item(),
                rel_err=((q - ref).norm() / ref.norm()).item())


def measure(name: str, images: Tuple[torch.Tensor, torch.Tensor], args) -> Dict:
    model = random_timm_model(name)
    size = model.pretrained_cfg['input_size']
    calib, held = (F.interpolate(x, size=size[1:], mode='bilinear', align_corners=False) for x in images)
    # BatchNorm statistics from every calibration image: from 16 (a few per class, solid backgrounds) a channel that
    # they leave near zero blows RedNet's logits up to 1e14 on other images
    calibrate_bn_(model, calib)
    ref = _logits(model, held, args.batch)
    out: Dict = dict(input_size=list(size), batch=args.batch, threads=args.threads,
                     logit_std=ref.std().item(), logit_range=(ref.max() - ref.min()).item())
    contenders = [Contender('float32', model)]
    for key, make in (('dynamic', lambda: quantize_dynamic(model)),
                      ('static', lambda: quantize_static(model, list(calib.split(args.batch))))):
        qmodel, err = _try(make)
        if qmodel is None:
            out[f'{key}_error'] = err
            continue
        out.update({f'{key}_{k}': v for k, v in agreement(_logits(qmodel, held, args.batch), ref).items()})
        contenders.append(Contender(key, qmodel))
    cfg = BenchConfig(batch=args.batch, threads=args.threads, rounds=args.rounds, warmup=1, memory=False, flops=False)
    rows = run_group(contenders, 0, [held[:args.batch]], cfg, group=name)
    out['float_ms'] = rows[0].ms
    for row in rows[1:]:
        out[f'{row.label}_ms'], out[f'{row.label}_speedup'] = row.ms, row.speedup
    return out


# ---------------------------------------------------------------------------------------------------- report

def _cell(r: Dict, key: str) -> str:
    if r.get(f'{key}_error'):
        return f'fails: {r[f"{key}_error"][:100]}'
    return (f'{r[f"{key}_speedup"]:.2f}x; agree {100 * r[f"{key}_agree_top1"]:.0f} % (top-5 '
            f'{100 * r[f"{key}_in_top5"]:.0f} %), Δlogit max {r[f"{key}_max_dlogit"]:.2f} / mean '
            f'{r[f"{key}_mean_dlogit"]:.3f}, rel. {r[f"{key}_rel_err"]:.3f}')


def markdown(results: Dict[str, Dict]) -> str:
    lines = ['| model | float32 | int8 dynamic (Linear, LSTM) | int8 static (FX) |', '|---|---|---|---|']
    for name, r in results.items():
        base = f'{r["float_ms"]:.0f} ms / {r["batch"]} @ {r["input_size"][-1]}, logit std {r["logit_std"]:.2f}'
        lines.append(f'| {name} | {base} | {_cell(r, "dynamic")} | {_cell(r, "static")} |')
    return '\n'.join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', help='zoo model names (default: the smallest variant of every family)')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--threads', type=int, default=1, help='CPU threads of the speed measurement')
    ap.add_argument('--rounds', type=int, default=5, help='timed rounds')
    ap.add_argument('--calib-images', type=int, default=32, help='calibration images of the static model')
    ap.add_argument('--images', type=int, default=96, help='held-out images of the comparison')
    ap.add_argument('--json', type=Path, help='write the results to this file (updated after every model)')
    ap.add_argument('--rows', type=Path, help='take the results from this --json file instead of measuring')
    ap.add_argument('--markdown', action='store_true', help="write the table into README.md's int8 section")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.backends.quantized.engine = 'x86'
    names = args.models or smallest_per_family()
    unknown = [n for n in names if n not in _VARIANTS]
    if unknown:
        raise SystemExit(f'error: not zoo models: {", ".join(unknown)}')
    if args.rows:
        results: Dict[str, Dict] = json.loads(args.rows.read_text())
        names = [n for n in names if n in results] if args.models else list(results)
    else:
        load = os.getloadavg() if hasattr(os, 'getloadavg') else None
        images = shapes_images(args.calib_images, args.images)
        results = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
        for name in names:
            results[name] = measure(name, images, args)
            print(name, json.dumps(results[name]), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1) + '\n')
        results['_machine'] = machine_summary(load) + f'; quantized engine {torch.backends.quantized.engine}'
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + '\n')
    table = markdown({n: results[n] for n in names if not n.startswith('_')})
    print(table)
    print(results.get('_machine', ''))
    if args.markdown:
        text = README.read_text()
        head, rest = text.split(INT8_START, 1)
        _, tail = rest.split(INT8_END, 1)
        machine = results.get('_machine')
        block = f'{INT8_START}\n{table}\n' + (f'\nMeasured on: {machine}.\n' if machine else '') + INT8_END
        README.write_text(head + block + tail)
        print(f'wrote the int8 table into {README}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
