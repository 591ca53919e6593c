"""Oversized separable depth-wise convolution: a ``(K, 1)`` then a ``(1, K)`` depth-wise convolution, zero padding
``K // 2``, no bias (the global branch of ParCNetV2, Xu et al., "ParCNetV2: Oversized Kernel with Enhanced
Attention", arXiv 2211.07157; official ``OversizeConv2d`` in https://github.com/XuRuihan/ParCNetV2 at b9d8524,
``models/parcnetv2.py``).

With ``K = 2n - 1`` on an ``n``-long axis every output sees the whole axis through its own slice of the kernel. The
kernel length is a parameter shape, fixed at construction: on another map size nothing is resized, and when the
map is shorter than ``(K + 1) / 2`` only the central ``2n - 1`` taps ever touch data (the others fall on padding).

Two exact formulations of the same operator, chosen from the call, never from tensor values:

- **convolution** (inference): ``F.conv2d`` on a channels-last input. oneDNN's channels-last depth-wise kernel
  vectorises over channels and its cost does not grow with taps that fall on padding; PyTorch's kernel for NCHW-
  contiguous maps is 6-20x slower on CPU for ParCNetV2's kernels at 224 (``tools/bench_parc.py``).
- **Toeplitz matmul** (when autograd records the call): along an axis of length ``n`` the 1-D depth-wise conv is,
  per channel, an ``[n_out, n_in]`` Toeplitz matrix ``T[c, i, j] = w[c, j - i + K // 2]`` (0 outside the kernel)
  built from the taps that touch data, so the layer is two batched matmuls ``T_h @ X @ T_w^T`` with channels as the
  batch. Forward + backward run 4-6x faster than with the channels-last convolutions on CPU (5-12x faster than
  with the NCHW ones).

Both give the official numbers (the same sums, in another order: differences are float rounding, ~1e-6).
"""
from typing import Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, to_2tuple

from .tracing import eager_channels_last, is_symbolic_tracing
from .window import contiguous_reshape

__all__ = ['OversizeConv2d', 'toeplitz_taps', 'oversize_conv', 'oversize_conv_matmul', 'resize_kernel_1d']


def toeplitz_taps(weight: torch.Tensor, n: int, dilation: int = 1) -> torch.Tensor:
    """``[C, K]`` kernels -> ``[C, n, n]`` matrices ``T[c, i, j] = weight[c, (j - i) / d + K // 2]`` (0 where that
    tap is outside the kernel, or ``j - i`` not a multiple of the dilation ``d``): the zero-padded (``d * (K // 2)``)
    1-D depth-wise convolution of an ``n``-long axis."""
    k = weight.shape[-1]
    pos = torch.arange(n, device=weight.device)
    offset = pos[None, :] - pos[:, None]  # [n_out, n_in]
    tap = torch.div(offset, dilation, rounding_mode='floor') + k // 2
    on_tap = (tap >= 0) & (tap < k) & (offset % dilation == 0)
    tap = torch.where(on_tap, tap, k)  # off-kernel positions read the zero appended below
    return F.pad(weight, (0, 1))[:, tap]


def oversize_conv_matmul(
        x: torch.Tensor, weight_h: torch.Tensor, weight_w: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """The separable depth-wise convolution as two batched matmuls over the channels.

    Args:
        x: ``[B, C, H, W]`` (any memory format).
        weight_h: ``[C, K_h]`` kernels along H; weight_w: ``[C, K_w]`` kernels along W (odd lengths).
        dilation: of both kernels.
    Returns:
        ``[B, C, H, W]`` (a permuted view).
    """
    B, C, H, W = x.shape
    t_h = toeplitz_taps(weight_h, H, dilation)  # [C, H_out, H_in]
    t_w = toeplitz_taps(weight_w, W, dilation)  # [C, W_out, W_in]
    y = contiguous_reshape(x.permute(1, 2, 0, 3), [C, H, B * W])  # channels as the batch, (B, W) as columns
    y = torch.bmm(t_h, y).reshape(C, H * B, W)  # rows (H_out, B)
    y = torch.bmm(y, t_w.transpose(1, 2))  # [C, H * B, W_out]
    return y.reshape(C, H, B, W).permute(2, 0, 1, 3)


def resize_kernel_1d(weight: torch.Tensor, length: int) -> torch.Tensor:
    """Resize ``[C, 1, K, 1]`` or ``[C, 1, 1, K]`` kernels to ``length`` taps as the official ``OversizeConv2d``'s
    resize mode does (``F.interpolate(mode='bilinear', align_corners=True)``, i.e. linear along the kernel)."""
    size = (length, 1) if weight.shape[-1] == 1 else (1, length)
    if tuple(weight.shape[-2:]) == size:
        return weight
    out = F.interpolate(weight.float(), size=size, mode='bilinear', align_corners=True)
    return out.to(weight.dtype)


@register_notrace_module  # the formulation is picked at run time (FX would otherwise freeze one path)
class OversizeConv2d(nn.Module):
    """Depth-wise ``conv_h`` (``K_h x 1``, padding ``K_h // 2``) then ``conv_w`` (``1 x K_w``, padding ``K_w // 2``),
    no bias. Both are linear depth-wise maps, so their order does not change the result.

    Args:
        dim: channels.
        kernel_size: ``K`` or ``(K_h, K_w)``, odd.
        dilation: spacing of the taps (padding ``dilation * (K // 2)``; 1 = the official operator, more in a stage
            that dilates instead of striding).

    The convolution modules hold the weights (``conv_h.weight [C, 1, K_h, 1]``, ``conv_w.weight [C, 1, 1, K_w]``);
    ``forward`` computes with the convolutions under inference and with the Toeplitz matmuls when autograd records
    the call (see the module docstring). Shapes: ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(
            self, dim: int, kernel_size: Union[int, Tuple[int, int]], dilation: int = 1, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        kh, kw = to_2tuple(kernel_size)
        if kh % 2 != 1 or kw % 2 != 1:
            raise ValueError(f'OversizeConv2d kernel sizes must be odd (zero padding K // 2 keeps the size), '
                             f'got {(kh, kw)}')
        self.dim = dim
        self.dilation = dilation
        d = dilation
        self.conv_h = nn.Conv2d(
            dim, dim, (kh, 1), padding=(d * (kh // 2), 0), dilation=(d, 1), groups=dim, bias=False, **dd)
        self.conv_w = nn.Conv2d(
            dim, dim, (1, kw), padding=(0, d * (kw // 2)), dilation=(1, d), groups=dim, bias=False, **dd)

    @property
    def kernel_size(self) -> Tuple[int, int]:
        return self.conv_h.weight.shape[2], self.conv_w.weight.shape[3]

    @torch.jit.ignore
    def resize_(self, kernel_size: Union[int, Tuple[int, int]]):
        """Resize the learned kernels once to ``(K_h, K_w)`` (odd) with :func:`resize_kernel_1d`; keeps
        ``requires_grad``."""
        kh, kw = to_2tuple(kernel_size)
        if kh % 2 != 1 or kw % 2 != 1:
            raise ValueError(f'OversizeConv2d kernel sizes must be odd, got {(kh, kw)}')
        for conv, k, axis in ((self.conv_h, kh, 0), (self.conv_w, kw, 1)):
            weight = conv.weight
            new = resize_kernel_1d(weight.detach(), k)
            conv.weight = nn.Parameter(new, requires_grad=weight.requires_grad)
            conv.kernel_size = (k, 1) if axis == 0 else (1, k)
            pad = self.dilation * (k // 2)
            conv.padding = (pad, 0) if axis == 0 else (0, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_symbolic_tracing():  # an FX graph (which cannot branch on autograd): one leaf call, see oversize_conv
            return oversize_conv(x, self.conv_h.weight, self.conv_w.weight, self.dilation)
        if torch.is_grad_enabled() and (x.requires_grad or self.conv_h.weight.requires_grad
                                        or self.conv_w.weight.requires_grad):
            return oversize_conv_matmul(
                x, self.conv_h.weight.flatten(1), self.conv_w.weight.flatten(1), self.dilation)
        return self.conv_w(self.conv_h(eager_channels_last(x)))

    def forward_nchw(self, x: torch.Tensor) -> torch.Tensor:
        """The official code's formulation: the two depth-wise convolutions on an NCHW-contiguous map (PyTorch's
        stock kernel). The same numbers as :meth:`forward`; the benchmark runs it as the official reference."""
        return self.conv_w(self.conv_h(x.contiguous()))


def oversize_conv(x: torch.Tensor, weight_h: torch.Tensor, weight_w: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """:class:`OversizeConv2d` as its two depth-wise convolutions (``weight_h`` ``[C, 1, K_h, 1]``, ``weight_w``
    ``[C, 1, 1, K_w]``, taps ``dilation`` apart), for FX graphs. An FX leaf: ``torch.ao``'s FX quantization leaves it
    float, as int8 has no fast kernel for depth-wise kernels this long (fbgemm's cover 3x3 / 5x5; ParCNetV2-XT's int8
    model ran 20x slower than float with them quantized)."""
    d = dilation
    x = F.conv2d(x, weight_h, None, 1, (d * (weight_h.shape[2] // 2), 0), (d, 1), weight_h.shape[0])
    return F.conv2d(x, weight_w, None, 1, (0, d * (weight_w.shape[3] // 2)), (1, d), weight_w.shape[0])


torch.fx.wrap('oversize_conv')
