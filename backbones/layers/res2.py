"""Res2Net's hierarchical split (Gao et al., arXiv 1904.01169), the spatial mixer of a Res2Net bottleneck."""
import torch
import torch.nn as nn

from .conv import ConvNormAct, LayerType

__all__ = ['Res2Split']


class Res2Split(nn.Module):
    """Hierarchical residual-like 3x3 mixing inside one block, usable as a :class:`Bottleneck` ``mixer_fn``.

    The input's ``scale * width`` channels are split into ``scale`` chunks ``x_0 .. x_{s-1}``; for ``i < s - 1``
    ``y_i = act(bn(conv3x3_i(z_i)))`` with ``z_0 = x_0`` and ``z_i = x_i + y_{i-1}``; the last chunk passes
    through; the output is ``[y_0 .. y_{s-2}, x_{s-1}]`` concatenated. Every 3x3 carries the block stride.

    In the first block of a stage (``first=True``) the chunks do not feed each other (``z_i = x_i``: the sizes of
    ``y_{i-1}`` and ``x_i`` differ there) and the last chunk goes through ``AvgPool2d(3, stride, padding=1)`` counting
    the padding, as the official code does. ``scale=1`` is a plain 3x3 conv-norm-act.

    Args:
        in_chs, out_chs: channels in and out; equal, a multiple of ``scale``.
        stride: block stride.
        first: first block of its stage.
        scale: number of chunks ``s``.
        groups: cardinality of each 3x3 (Res2NeXt).
        dilation: of every 3x3 (in a stage that dilates instead of striding; the first block's pool keeps its
            window, at stride 1, as timm's ``Bottle2neck`` does).
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            first: bool = False,
            scale: int = 4,
            groups: int = 1,
            dilation: int = 1,
            norm_layer: LayerType = nn.BatchNorm2d,
            act_layer: LayerType = nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if in_chs != out_chs or in_chs % scale != 0:
            raise ValueError(f'Res2Split maps C -> C with C a multiple of scale, got {in_chs} -> {out_chs}, '
                             f'scale={scale}')
        self.scale = scale
        self.width = in_chs // scale
        self.first = first
        self.convs = nn.ModuleList([
            ConvNormAct(
                self.width, self.width, 3, stride=stride, dilation=dilation, groups=groups, norm_layer=norm_layer,
                act_layer=act_layer, device=device, dtype=dtype)
            for _ in range(max(1, scale - 1))
        ])
        if scale > 1 and first:
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=True)
        else:
            self.pool = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = torch.split(x, self.width, 1)
        out = []
        y = xs[0]
        for i, conv in enumerate(self.convs):
            y = conv(xs[i] if i == 0 or self.first else xs[i] + y)
            out.append(y)
        if self.scale > 1:
            out.append(self.pool(xs[-1]))
        return torch.cat(out, 1)
