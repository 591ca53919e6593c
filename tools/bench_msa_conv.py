"""MSA-Conv attention: shift-and-accumulate (backbones.layers.MSAConvAttention) vs the unfold formulation.

The unfold formulation is what the official C++/CUDA op computes (an im2col buffer of C * kh * kw values per
pixel for K and for V). Both are run interleaved in one process on the same inputs, and the script prints the
median time ratio (unfold / ours; > 1 means ours is faster), forward only and forward + backward, plus the peak
extra memory the unfold buffers take. Usage::

    OMP_NUM_THREADS=1 python tools/bench_msa_conv.py [--rounds 7] [--batch 8] [--models tic_tiny] [--side 224]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from backbones.layers import MSAConvAttention


def unfold_attention(q, k, v, kernel_size, dilation, num_heads, scale):
    """The textbook / official-op formulation: gather every window with F.unfold."""
    B, C, H, W = q.shape
    kh, kw = kernel_size
    pad = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
    hd = C // num_heads
    kk = F.unfold(k, kernel_size, dilation=dilation, padding=pad).view(B, num_heads, hd, kh * kw, H, W)
    attn = (q.view(B, num_heads, hd, 1, H, W) * kk).sum(2) * scale  # [B, h, T, H, W]
    attn = attn.softmax(dim=2)
    vv = F.unfold(v, kernel_size, dilation=dilation, padding=pad).view(B, num_heads, hd, kh * kw, H, W)
    return (vv * attn.unsqueeze(2)).sum(3).reshape(B, C, H, W)


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(B, C, H, k, d, heads, rounds, backward):
    attn = MSAConvAttention(C, k, d, heads)
    q, kk, v = (torch.randn(B, C, H, H, requires_grad=backward) for _ in range(3))

    def ours():
        out = attn(q, kk, v)
        if backward:
            out.sum().backward()

    def ref():
        out = unfold_attention(q, kk, v, attn.kernel_size, d, heads, attn.scale)
        if backward:
            out.sum().backward()

    with torch.no_grad():
        torch.testing.assert_close(attn(q, kk, v), unfold_attention(q, kk, v, attn.kernel_size, d, heads, attn.scale))
    ctx = torch.enable_grad() if backward else torch.no_grad()
    with ctx:
        ours(), ref()  # warm-up
        ratios = [_time(ref) / _time(ours) for _ in range(rounds)]
    return statistics.median(ratios)


def bench_model(name, batch, side, rounds):
    """A whole model, eager forward: its MSA-Conv attentions tap by tap vs through the unfold formulation."""
    import types

    import timm

    import backbones  # noqa: F401
    from backbones.flops import _msa_conv_unfold_forward
    model = timm.create_model(name).eval()
    layers = [m for m in model.modules() if isinstance(m, MSAConvAttention)]
    x = torch.randn(batch, 3, side, side)

    def run(unfold):
        for m in layers:
            if unfold:
                m.forward = types.MethodType(_msa_conv_unfold_forward, m)
            elif 'forward' in vars(m):
                del m.forward
        return _time(lambda: model(x))

    with torch.no_grad():
        run(False), run(True)
        ratios = [run(True) / run(False) for _ in range(rounds)]
    return statistics.median(ratios)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--models', nargs='*', default=['tic_tiny'], help='whole models to time as well')
    parser.add_argument('--side', type=int, default=224, help='input side for --models')
    args = parser.parse_args()
    cases = [  # (C, side, kernel, dilation, heads): TiC-T stages at 224 (3x3 local and 3x3/3 pooled heads), 7x7
        (48, 56, 3, 1, 2), (48, 56, 3, 3, 1), (96, 28, 3, 1, 3), (192, 14, 3, 1, 6), (384, 7, 3, 1, 12),
        (96, 56, 7, 1, 3), (3, 20, 3, 1, 1),
    ]
    print(f'batch {args.batch}, {torch.get_num_threads()} thread(s); ratio = unfold time / shift-and-accumulate time')
    print(f'{"C":>4} {"side":>4} {"k":>2} {"d":>2} {"heads":>5}  {"fwd":>6}  {"fwd+bwd":>7}  unfold buffer (MB)')
    for C, side, k, d, heads in cases:
        fwd = bench(args.batch, C, side, k, d, heads, args.rounds, backward=False)
        bwd = bench(args.batch, C, side, k, d, heads, args.rounds, backward=True)
        buf = 2 * args.batch * C * k * k * side * side * 4 / 2 ** 20  # K and V im2col, float32
        print(f'{C:>4} {side:>4} {k:>2} {d:>2} {heads:>5}  {fwd:6.2f}  {bwd:7.2f}  {buf:.1f}')
    for name in args.models:
        print(f'{name} at {args.side}x{args.side}, batch {args.batch}, eager forward: '
              f'{bench_model(name, args.batch, args.side, args.rounds):.2f}')


if __name__ == '__main__':
    main()
