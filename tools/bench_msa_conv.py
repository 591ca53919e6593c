#!/usr/bin/env python
"""MSA-Conv attention: shift-and-accumulate (backbones.layers.MSAConvAttention) vs the official im2col (unfold)
formulation, layer by layer at TiC-T's shapes and for whole TiC models, interleaved in one process on the same inputs.

The unfold formulation is what the official C++/CUDA op computes (an im2col buffer of C * kh * kw values per pixel
for K and for V). Speed-up > 1 means ours is faster; forward only and forward + backward; the peak-memory column
shows the unfold buffers. Usage::

    python tools/bench_msa_conv.py [--rounds 7] [--batch 8] [--models tic_tiny] [--side 224] [--threads 1]

Whole models alone: ``python tools/benchmark.py --models tic_tiny --ref official``.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backbones  # noqa: E402, F401
from backbones.bench import BenchConfig, Contender, benchmark, rows_markdown, run_group  # noqa: E402
from backbones.layers import MSAConvAttention  # noqa: E402


class UnfoldAttention(torch.nn.Module):
    """The same layer run through its official (im2col) formulation."""

    def __init__(self, attn: MSAConvAttention):
        super().__init__()
        self.attn = attn

    def forward(self, q, k, v):
        return self.attn.forward_unfold(q, k, v)


# (C, side, kernel, dilation, heads): TiC-T stages at 224 (3x3 local and 3x3/3 pooled heads), a 7x7 window
CASES = [(48, 56, 3, 1, 2), (48, 56, 3, 3, 1), (96, 28, 3, 1, 3), (192, 14, 3, 1, 6), (384, 7, 3, 1, 12),
         (96, 56, 7, 1, 3)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=7)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--models', nargs='*', default=['tic_tiny'], help='whole models to time as well')
    ap.add_argument('--side', type=int, default=224, help='input side for --models')
    args = ap.parse_args(argv)
    for mode in ('infer', 'train'):
        cfg = BenchConfig(mode=mode, batch=args.batch, threads=args.threads, rounds=args.rounds, flops=False)
        rows = []
        for C, side, k, d, heads in CASES:
            attn = MSAConvAttention(C, k, d, heads)
            qkv = [torch.randn(args.batch, C, side, side) for _ in range(3)]
            group = f'C={C} side={side} k={k} d={d} heads={heads}'
            rows += run_group([Contender(f'{group}: shift-and-accumulate', attn, 'module'),
                               Contender(f'{group}: unfold', UnfoldAttention(attn), 'official op')], 1, qkv, cfg)
        print(rows_markdown(rows))
    if args.models:
        cfg = BenchConfig(batch=args.batch, img_size=args.side, threads=args.threads, rounds=args.rounds)
        print(rows_markdown(benchmark(args.models, cfg, reference='official', optimized=False)))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
