#!/usr/bin/env python
"""Speed of ParCNetV2's oversized depth-wise convolutions: the formulations of ``backbones.layers.OversizeConv2d``
against PyTorch's stock convolution, per layer and for a whole model, on CPU.

    python tools/bench_parc.py                               # parcnetv2_xt at 224, batch 8, one thread
    python tools/bench_parc.py --model parcnetv2_tiny --batch 1 --threads 2 --rounds 9
    python tools/bench_parc.py --img-size 512 --no-model     # layers only, segmentation-sized maps

Formulations of one ``(K, 1)`` then ``(1, K)`` depth-wise conv (zero padding ``K // 2``):

- ``stock``: ``F.conv2d`` on an NCHW-contiguous map (``nn.Conv2d`` on a plain NCHW tensor);
- ``conv_cl``: ``F.conv2d`` on a channels-last map (what the layer runs under inference);
- ``toeplitz``: two batched matmuls with per-channel Toeplitz matrices (what it runs when autograd records it).

Timings interleave the candidates inside each round (the machine may be shared) and report the median over rounds;
``x stock`` is stock time / candidate time. Each candidate's max |difference| from ``stock`` is printed too.
``run_layers`` / ``run_model`` return the rows, for a general benchmark to call.
"""
import argparse
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F

import backbones  # noqa: F401  (registers the zoo)
from backbones.layers.oversize_conv import OversizeConv2d, oversize_conv_matmul
from backbones.models.parcnetv2 import feature_sizes


def _separable(x: torch.Tensor, w_h: torch.Tensor, w_w: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    y = F.conv2d(x, w_h, padding=(w_h.shape[2] // 2, 0), groups=c)
    return F.conv2d(y, w_w, padding=(0, w_w.shape[3] // 2), groups=c)


def _stock(x: torch.Tensor, w_h: torch.Tensor, w_w: torch.Tensor) -> torch.Tensor:
    return _separable(x.contiguous(), w_h, w_w)


def _conv_cl(x: torch.Tensor, w_h: torch.Tensor, w_w: torch.Tensor) -> torch.Tensor:
    return _separable(x.contiguous(memory_format=torch.channels_last), w_h, w_w)


def _toeplitz(x: torch.Tensor, w_h: torch.Tensor, w_w: torch.Tensor) -> torch.Tensor:
    return oversize_conv_matmul(x, w_h.flatten(1), w_w.flatten(1))


FORMULATIONS: Dict[str, Callable] = {'stock': _stock, 'conv_cl': _conv_cl, 'toeplitz': _toeplitz}


def interleaved(fns: Dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 1) -> Dict[str, float]:
    """Median seconds per call of each function, the functions interleaved within each round."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r >= warmup:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def run_layers(
        model: str = 'parcnetv2_xt', img_size: int = 224, batch: int = 8, rounds: int = 7,
        train: Sequence[bool] = (False, True)) -> List[Dict]:
    """One row per (stage, mode): the stage's oversized conv on its map at ``img_size`` (inference: no grad;
    train: forward + backward to the input and both kernels)."""
    import timm
    net = timm.create_model(model, img_size=img_size, device='meta')
    rows = []
    for i, ((h, w), stage) in enumerate(zip(feature_sizes(img_size), net.stages)):
        conv = stage.blocks[0].token_mixer.dwconv1
        c, (kh, kw) = conv.dim, conv.kernel_size
        g = torch.Generator().manual_seed(i)
        x = torch.randn(batch, c, h, w, generator=g)
        w_h = torch.randn(c, 1, kh, 1, generator=g) / kh ** 0.5
        w_w = torch.randn(c, 1, 1, kw, generator=g) / kw ** 0.5
        for mode_train in train:
            if mode_train:
                args = [t.clone().requires_grad_() for t in (x, w_h, w_w)]

                def step(fn, args=args):
                    fn(*args).square().sum().backward()
            else:
                args = [x, w_h, w_w]

                def step(fn, args=args):
                    with torch.no_grad():
                        fn(*args)
            with torch.no_grad():
                ref = _stock(x, w_h, w_w)
                err = {k: (fn(x, w_h, w_w) - ref).abs().max().item() for k, fn in FORMULATIONS.items()}
            t = interleaved({k: (lambda fn=fn: step(fn)) for k, fn in FORMULATIONS.items()}, rounds)
            rows.append(dict(stage=i, batch=batch, chans=c, map=f'{h}x{w}', kernel=f'{kh}x{kw}',
                             mode='train' if mode_train else 'infer', ms={k: v * 1e3 for k, v in t.items()},
                             speedup={k: t['stock'] / v for k, v in t.items()}, max_abs_diff=err))
    return rows


def run_model(model: str = 'parcnetv2_xt', img_size: int = 224, batch: int = 8, rounds: int = 5) -> List[Dict]:
    """Whole-model inference (eval, no grad) and a training step (forward + backward), with the layer as it is
    (``ours``: conv under inference, Toeplitz under autograd), with channels-last convs always (``conv_cl``), and
    with the stock NCHW convolution (``stock``)."""
    import timm
    net = timm.create_model(model)
    x = torch.randn(batch, 3, img_size, img_size)
    original = OversizeConv2d.forward
    variants = {
        'ours': original,
        'conv_cl': lambda self, x: _conv_cl(x, self.conv_h.weight, self.conv_w.weight),
        'stock': lambda self, x: _stock(x, self.conv_h.weight, self.conv_w.weight),
    }

    def call(forward, train):
        OversizeConv2d.forward = forward
        if train:
            net.train()
            net(x).sum().backward()
        else:
            net.eval()
            with torch.no_grad():
                net(x)
    rows = []
    try:
        for train in (False, True):
            t = interleaved({k: (lambda f=f, tr=train: call(f, tr)) for k, f in variants.items()}, rounds)
            rows.append(dict(model=model, batch=batch, img_size=img_size, mode='train' if train else 'infer',
                             ms={k: v * 1e3 for k, v in t.items()}, speedup={k: t['stock'] / v for k, v in t.items()}))
    finally:
        OversizeConv2d.forward = original
    return rows


def _fmt(rows: List[Dict], key_cols: Sequence[str]) -> str:
    names = list(FORMULATIONS) if 'kernel' in key_cols else ['ours', 'conv_cl', 'stock']
    lines = []
    for r in rows:
        head = ' '.join(f'{k}={r[k]}' for k in key_cols)
        cells = '  '.join(f'{n} {r["ms"][n]:8.2f} ms (x{r["speedup"][n]:5.2f})' for n in names)
        err = '' if 'max_abs_diff' not in r else '  max|diff| ' + ' '.join(
            f'{n}={r["max_abs_diff"][n]:.1e}' for n in names if n != 'stock')
        lines.append(f'{head:55s} {cells}{err}')
    return '\n'.join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='parcnetv2_xt')
    ap.add_argument('--img-size', type=int, default=224)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--rounds', type=int, default=7, help='timed rounds (median reported)')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--no-model', action='store_true', help='layers only')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, {args.threads} thread(s); x = stock time / time (higher is faster)')
    print(_fmt(run_layers(args.model, args.img_size, args.batch, args.rounds),
               ['stage', 'mode', 'map', 'kernel', 'chans']))
    if not args.no_model:
        print(_fmt(run_model(args.model, args.img_size, args.batch, max(3, args.rounds // 2)),
                   ['model', 'mode', 'batch']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
