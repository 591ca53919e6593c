"""Stems: a stack of conv-norm-act layers; the max-pool that follows a ResNet stem."""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from .conv import ConvNormAct, LayerType
from .tracing import is_exporting

__all__ = ['ConvStem', 'stem_pool', 'stem_pool_min_input']


def stem_pool(kind: Optional[str]) -> nn.Module:
    """The 3x3 stride-2 max-pool that closes a ResNet stem.

    ``'max'``: PyTorch style (pad 1, floor). ``'max_caffe'``: Caffe style (pad 0, ceil), which the SENet/SKNet
    prototxts use; both give 56x56 at 224 but different windows. ``None``: no pool.
    """
    if kind is None:
        return nn.Identity()
    if kind == 'max':
        return nn.MaxPool2d(3, stride=2, padding=1)
    if kind == 'max_caffe':
        return nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
    raise ValueError(f"unknown stem pool '{kind}', expected 'max', 'max_caffe' or None")


def stem_pool_min_input(kind: Optional[str], stem_reduction: int) -> int:
    """The smallest input side that a stem of total stride ``stem_reduction`` followed by ``stem_pool(kind)`` takes:
    Caffe's pool (no padding) needs a map of at least 2, i.e. ``stem_reduction + 1``; the others any (they pad)."""
    return stem_reduction + 1 if kind == 'max_caffe' else 1


class ConvStem(nn.Module):
    """``conv1 .. convN`` (conv-norm-act; the first carries the stride).

    A single 7x7 layer gives the classic ResNet stem; ``widths=(32, 32, 64), kernel_size=3`` the "deep" stem (the
    max-pool that follows them is the first stage's downsample: :class:`backbones.models._resnet.ResNetSkeleton`).

    ``channels_last=True`` converts the input to channels-last memory format first, so that the whole network after
    it runs channels-last (values unchanged, only strides): on CPUs oneDNN's convolutions skip their layout reorders
    (the stem's 7x7 conv and the max-pool gain most), and GPUs' tensor cores prefer it too.

    Attributes:
        out_chs: output channels.
        reduction: total stride.
    """

    def __init__(
            self,
            in_chs: int,
            widths: Union[int, Sequence[int]] = 64,
            kernel_size: int = 7,
            stride: int = 2,
            norm_layer: LayerType = nn.BatchNorm2d,
            act_layer: LayerType = nn.ReLU,
            channels_last: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.channels_last = channels_last
        widths = (widths,) if isinstance(widths, int) else tuple(widths)
        prev = in_chs
        for i, w in enumerate(widths):
            self.add_module(f'conv{i + 1}', ConvNormAct(
                prev, w, kernel_size, stride=stride if i == 0 else 1, norm_layer=norm_layer, act_layer=act_layer,
                **dd))
            prev = w
        self.out_chs = prev
        self.reduction = stride

    def forward(self, x):
        if self.channels_last and not is_exporting():  # an exported graph would guard on the batch size (B > 1)
            x = x.contiguous(memory_format=torch.channels_last)
        for m in self.children():
            x = m(x)
        return x
