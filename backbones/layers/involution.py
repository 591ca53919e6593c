"""Involution (Li et al., "Involution: Inverting the Inherence of Convolution for Visual Recognition",
arXiv 2103.06255).

A convolution shares one kernel over all positions and has a different kernel per channel; an involution does the
opposite: at every output pixel a small network generates a ``K x K`` kernel from the input itself, and that kernel
is shared by the channels of one group (``group_channels`` consecutive channels)::

    Z = avgpool_s(X)                                   # kernel-generation input (identity at stride 1)
    W = conv2(relu(bn(conv1(Z))))                      # [B, G*K*K, H/s, W/s], channel = g*K*K + a*K + b
    Y[n, c, i, j] = sum_{a,b} W[n, (c // group_channels)*K*K + a*K + b, i, j] * Xp[n, c, s*i + d*a, s*j + d*b]

with ``Xp`` the input zero-padded by ``d * (K - 1) // 2`` (dilation ``d``: 1 in the official operator, more in a
stage that dilates instead of striding). Parameter names follow the official operator (``conv1.conv``,
``conv1.bn``), except that its ``conv2.conv`` (the kernel-generating 1x1 conv with bias) is a plain ``conv2`` here.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv import ConvNormAct
from .window_taps import window_weighted_sum

__all__ = ['Involution']


class Involution(nn.Module):
    """Involution with per-pixel, per-group kernels generated from the (average-pooled) input.

    Args:
        channels: input = output channels ``C``; must be a multiple of ``group_channels``.
        kernel_size: ``K`` (odd), padding ``(K - 1) // 2``.
        stride: ``s``; the kernel is generated from ``AvgPool(s, s)(x)`` and the aggregation is strided. At ``s > 1``
            the input sides must be multiples of ``s``, as in the official operator (asserted; RedNet checks its input).
        group_channels: channels sharing one generated kernel (``G = C // group_channels`` groups, contiguous).
        reduction: width reduction of the kernel-generating bottleneck (``C -> C // reduction -> G*K*K``).
        dilation: spacing of the kernel taps (1 = the official operator).

    Shapes: ``[B, C, H, W] -> [B, C, ceil(H/s), ceil(W/s)]``.

    The aggregation is :func:`~backbones.layers.window_taps.window_weighted_sum`: a sum over the ``K*K`` kernel taps
    of (shifted, strided view of the padded input) times (that tap's kernel map), which never materialises the
    ``K*K``-times larger unfolded input that the official unfold-based operator builds; the result is the same sum.
    """

    def __init__(
            self,
            channels: int,
            kernel_size: int,
            stride: int = 1,
            group_channels: int = 16,
            reduction: int = 4,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if channels % group_channels != 0:
            raise ValueError(
                f'Involution channels ({channels}) must be a multiple of group_channels ({group_channels})')
        if kernel_size % 2 != 1:
            raise ValueError(f'Involution kernel_size must be odd, got {kernel_size}')
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.group_channels = group_channels
        self.groups = channels // group_channels
        self.padding = dilation * (kernel_size - 1) // 2
        self.pool = nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()
        self.conv1 = ConvNormAct(channels, channels // reduction, 1, **dd)
        self.conv2 = nn.Conv2d(channels // reduction, kernel_size * kernel_size * self.groups, 1, bias=True, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        if s > 1:  # else the pooled kernel map is smaller than the output (and broadcasts silently when it is 1)
            torch._assert((x.shape[-2] % s) + (x.shape[-1] % s) == 0,
                          'Involution: input sides must be multiples of the stride')
        weight = self.conv2(self.conv1(self.pool(x)))  # [B, G*K*K, Ho, Wo]
        weight = weight.unflatten(1, (self.groups, k * k))  # [B, G, K*K, Ho, Wo], tap t = a*K + b
        x = x.unflatten(1, (self.groups, self.group_channels))  # [B, G, C/G, H, W]
        d = (self.dilation, self.dilation)
        return window_weighted_sum(x, weight, (k, k), dilation=d, stride=s).flatten(1, 2)  # [B, C, Ho, Wo]

    def forward_unfold(self, x: torch.Tensor) -> torch.Tensor:
        """The official operator's formulation (its naive PyTorch path): unfold the input into ``[B, C*K*K, Ho*Wo]``
        windows and multiply-sum them with the generated kernels. The same numbers as :meth:`forward` in a handful of
        ops, with a ``K*K`` times larger temporary: the FLOP counter traces it, and the benchmark runs it as the
        official reference."""
        k, s, g = self.kernel_size, self.stride, self.groups
        weight = self.conv2(self.conv1(self.pool(x)))  # [B, G*K*K, Ho, Wo]
        b, _, h, w = weight.shape
        cols = F.unfold(x, k, dilation=self.dilation, padding=self.padding, stride=s)  # [B, C*K*K, Ho*Wo]
        cols = cols.view(b, g, -1, k * k, h, w)
        return (cols * weight.view(b, g, 1, k * k, h, w)).sum(dim=3).view(b, -1, h, w)

    def extra_repr(self) -> str:
        dilation = f', dilation={self.dilation}' if self.dilation > 1 else ''
        return f'{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}{dilation}, groups={self.groups}'

