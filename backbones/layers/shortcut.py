"""Projection shortcuts for residual blocks whose shape changes."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv import LayerType, pad_same, same_padding
from .fuse import fuse_conv_bn
from .stage import downsamples

__all__ = ['Shortcut']


class Shortcut(nn.Module):
    """Projection of the residual input to the block's output shape: ``[pool] -> conv -> bn``.

    Args:
        kernel_size: 1 (ResNet) or 3 (SENet-154's 3x3 stride-2 projection; 1 where the block does not downsample).
        avg_down: ResNet-D / Res2Net-v1b style: ``AvgPool(stride, ceil, count_include_pad=False)`` then a stride-1
            1x1 conv.
        dilation, first_dilation: of the block's stage and of its first spatial layer
            (:func:`backbones.layers.stage_strides`). A block that dilates instead of downsampling (stride 1,
            ``dilation > 1``) keeps its projection's form: SENet-154's 3x3 conv (at ``first_dilation``), and the
            average pool of ``avg_down`` as a 2x2 window at stride 1 ("SAME" padding, the zero padding counted), as
            timm's ``resnet.downsample_avg`` does.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            kernel_size: int = 1,
            avg_down: bool = False,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            norm_layer: LayerType = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        super().__init__()
        pooled = downsamples(stride, dilation, first_dilation)
        if not pooled:
            kernel_size = 1
        conv_dilation = (first_dilation or dilation) if kernel_size > 1 else 1
        if avg_down and stride > 1:
            self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
            stride = 1
        elif avg_down and pooled:
            self.pool = AvgPool2x2Same()
        else:
            self.pool = nn.Identity()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride=stride, padding=same_padding(kernel_size, conv_dilation),
            dilation=conv_dilation, bias=False, device=device, dtype=dtype)
        self.bn = norm_layer(out_chs, device=device, dtype=dtype)

    def forward(self, x):
        return self.bn(self.conv(self.pool(x)))

    def fuse(self) -> 'Shortcut':
        """Fold a ``BatchNorm2d`` into the conv, in place (see :meth:`ConvNormAct.fuse`); returns ``self``."""
        if type(self.bn) is nn.BatchNorm2d and self.bn.track_running_stats:
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()
        return self


class AvgPool2x2Same(nn.Module):
    """2x2 average pool at stride 1 after "SAME" zero padding (one row / column at the bottom / right), which is
    averaged in: ``avg_down`` in a dilated stage, as timm's ``AvgPool2dSame(2, 1)`` computes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(pad_same(x, 2, 1), 2, 1)
