#!/usr/bin/env python
"""Eager inference speed of a model before and after timm's ``reparameterize_model`` (which calls each block's
``reparameterize()``), on the same random non-trivial weights; also the largest logit difference.

    python tools/bench_reparameterize.py --model rapidnet_ti
    python tools/bench_reparameterize.py --model rapidnet_b --batch 8 --size 224 --threads 4 --rounds 9

The two models run interleaved in one process (round i times both), so a busy machine slows both alike; the
speed-up is the median over rounds of the per-round ratio.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))


def _time(model, x, iters):
    start = time.perf_counter()
    for _ in range(iters):
        model(x)
    return (time.perf_counter() - start) / iters


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='rapidnet_ti')
    ap.add_argument('--batch', type=int, default=1)
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--rounds', type=int, default=7)
    ap.add_argument('--iters', type=int, default=5, help='forwards per model per round')
    ap.add_argument('--channels-last', action='store_true')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import timm
    from _oracle import random_model
    from timm.utils.model import reparameterize_model

    import backbones  # noqa: F401
    model = random_model(args.model)
    folded = reparameterize_model(model)
    x = torch.randn(args.batch, 3, args.size, args.size)
    if args.channels_last:
        model, folded = model.to(memory_format=torch.channels_last), folded.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in folded.parameters()))
    with torch.inference_mode():
        diff = (model(x) - folded(x)).abs().max().item()
        for m in (model, folded):  # warm-up
            _time(m, x, 2)
        rows = []
        for _ in range(args.rounds):
            t0, t1 = _time(model, x, args.iters), _time(folded, x, args.iters)
            rows.append((t0, t1, t0 / t1))
    med = statistics.median(r[2] for r in rows)
    print(f'{args.model} batch {args.batch} @ {args.size}, {args.threads} thread(s), timm {timm.__version__}, '
          f'torch {torch.__version__}')
    print(f'params {params[0]:,} -> {params[1]:,}; max |logit diff| {diff:.2e}')
    print(f'median ms/batch: {1e3 * statistics.median(r[0] for r in rows):.2f} -> '
          f'{1e3 * statistics.median(r[1] for r in rows):.2f}; speed-up (median of per-round ratios) {med:.2f}x')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
