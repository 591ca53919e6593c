"""Conv -> norm -> activation, the unit every CNN family here is made of."""
from typing import Callable, Optional, Type, Union

import torch.nn as nn

from .fuse import fuse_conv_bn

__all__ = ['ConvNormAct', 'same_padding']

LayerType = Union[Type[nn.Module], Callable[..., nn.Module]]


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Symmetric padding keeping the size at stride 1 (odd kernels)."""
    return ((kernel_size - 1) // 2) * dilation


class ConvNormAct(nn.Module):
    """``conv`` (no bias by default) -> ``bn`` -> ``act``; keys ``conv.weight``, ``bn.*``.

    Args:
        in_chs, out_chs: channels.
        kernel_size, stride, dilation, groups: of the convolution; padding defaults to "same" at stride 1.
        padding: explicit symmetric padding (``None`` = ``same_padding``).
        bias: conv bias.
        norm_layer: normalization class (``None`` for none).
        act_layer: activation class (``None`` for none, e.g. before a residual add).
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 1,
            stride: int = 1,
            padding: Optional[int] = None,
            dilation: int = 1,
            groups: int = 1,
            bias: bool = False,
            norm_layer: Optional[LayerType] = nn.BatchNorm2d,
            act_layer: Optional[LayerType] = nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if padding is None:
            padding = same_padding(kernel_size, dilation)
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=groups,
            bias=bias, **dd)
        self.bn = norm_layer(out_chs, **dd) if norm_layer is not None else nn.Identity()
        self.act = act_layer(inplace=True) if act_layer is not None else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> 'ConvNormAct':
        """Fold a ``BatchNorm2d`` (its running statistics: the eval-mode function) into the conv, in place; returns
        ``self``. Other norms, or none, are left as they are. timm's ``reparameterize_model`` and
        :func:`backbones.optimize_for_inference` call it; the model is then meant for inference only."""
        if type(self.bn) is nn.BatchNorm2d and self.bn.track_running_stats:
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()
        return self
