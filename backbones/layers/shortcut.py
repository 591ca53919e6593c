"""Projection shortcuts for residual blocks whose shape changes."""
import torch.nn as nn

from .conv import LayerType
from .fuse import fuse_conv_bn

__all__ = ['Shortcut']


class Shortcut(nn.Module):
    """Projection of the residual input to the block's output shape: ``[pool] -> conv -> bn``.

    Args:
        kernel_size: 1 (ResNet) or 3 (SENet-154's 3x3 stride-2 projection; falls back to 1 at stride 1).
        avg_down: ResNet-D / Res2Net-v1b style: ``AvgPool(stride, ceil, count_include_pad=False)`` then a stride-1
            1x1 conv.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            kernel_size: int = 1,
            avg_down: bool = False,
            norm_layer: LayerType = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if stride == 1:
            kernel_size = 1
        if avg_down and stride > 1:
            self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
            stride = 1
        else:
            self.pool = nn.Identity()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=False,
            device=device, dtype=dtype)
        self.bn = norm_layer(out_chs, device=device, dtype=dtype)

    def forward(self, x):
        return self.bn(self.conv(self.pool(x)))

    def fuse(self) -> 'Shortcut':
        """Fold a ``BatchNorm2d`` into the conv, in place (see :meth:`ConvNormAct.fuse`); returns ``self``."""
        if type(self.bn) is nn.BatchNorm2d and self.bn.track_running_stats:
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()
        return self
