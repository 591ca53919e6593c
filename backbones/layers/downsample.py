"""The pre-norm downsampler that opens a stage of DaViT, ParCNetV2 and BiFormer-STL: norm over the input channels,
then one strided conv."""
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d, register_notrace_function

from .conv import strided_conv2d
from .tracing import is_tracing
from .window import round_up

__all__ = ['PreNormDownsample', 'pad_nchw']


@register_notrace_function
def pad_nchw(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad an NCHW map on the bottom / right so H and W are multiples of ``multiple`` (DaViT's patch embeds)."""
    H, W = x.shape[-2], x.shape[-1]
    pad_h = round_up(H, multiple) - H
    pad_w = round_up(W, multiple) - W
    if is_tracing() or pad_h or pad_w:  # a traced graph always pads (see backbones.layers.tracing)
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


class PreNormDownsample(nn.Module):
    """``norm`` (over the input channels) -> [zero-pad to a multiple of the stride] -> ``conv`` ``kernel_size`` at
    ``stride`` with bias; in a stage that dilates instead (``stride=1``), the same window at every pixel, dilated by
    ``dilation`` (:func:`~backbones.layers.strided_conv2d`).

    Args:
        in_chs, out_chs: widths.
        kernel_size, stride, padding: of the conv (DaViT and BiFormer-STL: 2x2/2 patch merging; ParCNetV2: 3x3/2, pad
            1).
        dilation: of the conv where the stage dilates.
        norm_layer: ``norm_layer(in_chs, device=, dtype=)`` on the NCHW map.
        pad_to_stride: first zero-pad the right / bottom to a multiple of ``stride`` (DaViT: every size runs).
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 2,
            stride: int = 2,
            padding: int = 0,
            dilation: int = 1,
            norm_layer: Callable[..., nn.Module] = LayerNorm2d,
            pad_to_stride: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.stride = stride
        self.pad_to_stride = pad_to_stride
        self.norm = norm_layer(in_chs, **dd)
        self.conv = strided_conv2d(in_chs, out_chs, kernel_size, stride, padding=padding, dilation=dilation, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.pad_to_stride:
            x = pad_nchw(x, self.stride)
        return self.conv(x)
