#!/usr/bin/env python
"""ParCNetV2's oversized depth-wise convolutions (backbones.layers.OversizeConv2d): its formulations against the
official code's (PyTorch's stock convolution on NCHW maps), layer by layer at a model's shapes and for whole models,
interleaved in one process on the same inputs (library: backbones.bench).

Formulations of one ``(K, 1)`` then ``(1, K)`` depth-wise conv (zero padding ``K // 2``), per stage of ``--model``:

- ``stock``: ``F.conv2d`` on an NCHW-contiguous map, the official code's (the reference);
- ``conv_cl``: ``F.conv2d`` on a channels-last map (what the layer runs under inference);
- ``toeplitz``: two batched matmuls with per-channel Toeplitz matrices (what it runs when autograd records it).

Inference and a training step (forward + backward to the input and both kernels); speed-up > 1 means faster than
``stock``, and the parity column is each one's largest difference from it. Usage::

    python tools/bench_parc.py                                    # parcnetv2_xt at 224, batch 8, one thread
    python tools/bench_parc.py --model parcnetv2_tiny --batch 1 --threads 2 --rounds 9
    python tools/bench_parc.py --img-size 512 --models            # layers only, segmentation-sized maps

Whole models alone: ``python tools/benchmark.py --models parcnetv2_xt --ref official --mode both``.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backbones  # noqa: E402, F401  (registers the zoo)
from backbones.bench import BenchConfig, Contender, benchmark, rows_markdown, run_group  # noqa: E402
from backbones.layers.oversize_conv import oversize_conv_matmul  # noqa: E402
from backbones.models.parcnetv2 import feature_sizes  # noqa: E402


class Separable(torch.nn.Module):
    """One formulation of the separable depth-wise conv, taking ``(x, w_h [C, 1, K, 1], w_w [C, 1, 1, K])``."""

    def __init__(self, formulation: str):
        super().__init__()
        self.formulation = formulation

    def forward(self, x, w_h, w_w):
        if self.formulation == 'toeplitz':
            return oversize_conv_matmul(x, w_h.flatten(1), w_w.flatten(1))
        fmt = torch.channels_last if self.formulation == 'conv_cl' else torch.contiguous_format
        y = F.conv2d(x.contiguous(memory_format=fmt), w_h, padding=(w_h.shape[2] // 2, 0), groups=x.shape[1])
        return F.conv2d(y, w_w, padding=(0, w_w.shape[3] // 2), groups=x.shape[1])


def layer_rows(model: str, img_size: int, cfg: BenchConfig):
    """One group per stage: the stage's oversized conv on its map at ``img_size``, ``stock`` as the reference."""
    import timm
    net = timm.create_model(model, img_size=img_size, device='meta')
    rows = []
    for i, ((h, w), stage) in enumerate(zip(feature_sizes(img_size), net.stages)):
        conv = stage.blocks[0].token_mixer.dwconv1
        c, (kh, kw) = conv.dim, conv.kernel_size
        g = torch.Generator().manual_seed(i)
        inputs = [torch.randn(cfg.batch, c, h, w, generator=g), torch.randn(c, 1, kh, 1, generator=g) / kh ** 0.5,
                  torch.randn(c, 1, 1, kw, generator=g) / kw ** 0.5]
        group = f'stage {i}: C={c} map={h}x{w} kernel={kh}x{kw}'
        contenders = [Contender(f'{group}: {f}', Separable(f), 'official op' if f == 'stock' else 'module')
                      for f in ('stock', 'conv_cl', 'toeplitz')]
        rows += run_group(contenders, 0, inputs, cfg, group=group)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='parcnetv2_xt', help='the model whose stages give the layer shapes')
    ap.add_argument('--models', nargs='*', default=None, help='whole models to time as well (default: --model)')
    ap.add_argument('--img-size', type=int, default=224)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--rounds', type=int, default=7, help='timed rounds (median reported)')
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args(argv)
    models = [args.model] if args.models is None else args.models
    for mode in ('infer', 'train'):
        cfg = BenchConfig(mode=mode, batch=args.batch, threads=args.threads, rounds=args.rounds, flops=False)
        print(rows_markdown(layer_rows(args.model, args.img_size, cfg)))
        if models:
            cfg = BenchConfig(mode=mode, batch=args.batch, img_size=args.img_size, threads=args.threads,
                              rounds=max(3, args.rounds // 2))
            print(rows_markdown(benchmark(models, cfg, reference='official', optimized=False)))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
