"""Stems: a stack of conv-norm-act layers; the TF "SAME" conv stem of MaxViT and MOAT; the max-pool that follows a
ResNet stem."""
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from .conv import ConvNormAct, LayerType, create_conv2d_same
from .tracing import eager_channels_last, is_exporting

__all__ = ['ConvStem', 'SameConvStem', 'stem_pool', 'stem_pool_min_input']


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
    """``conv1 .. convN`` (:class:`~backbones.layers.ConvNormAct`; by default the first carries the stride).

    A single 7x7 layer gives the classic ResNet stem; ``widths=(32, 32, 64), kernel_size=3`` the "deep" stem (the
    max-pool that follows them is the first stage's downsample: :class:`backbones.models._resnet.ResNetSkeleton`);
    ``widths=(C / 2, C), kernel_size=3, stride=(2, 2), last_act=False`` the two-conv stride-4 patch embedding of
    BiFormer and TiC (each 3x3/2 conv maps a side ``n`` to ``ceil(n / 2)``).

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
            stride: Union[int, Sequence[int]] = 2,
            norm_layer: LayerType = nn.BatchNorm2d,
            act_layer: LayerType = nn.ReLU,
            last_act: bool = True,
            bias: bool = False,
            channels_last: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.channels_last = channels_last
        widths = (widths,) if isinstance(widths, int) else tuple(widths)
        # an int: the first conv's stride (the others 1); a sequence: one per conv
        strides = [stride] + [1] * (len(widths) - 1) if isinstance(stride, int) else list(stride)
        assert len(strides) == len(widths), 'stride: an int or one per conv'
        prev = in_chs
        for i, (w, s) in enumerate(zip(widths, strides)):
            act = act_layer if last_act or i < len(widths) - 1 else None
            self.add_module(f'conv{i + 1}', ConvNormAct(
                prev, w, kernel_size, stride=s, bias=bias, norm_layer=norm_layer, act_layer=act, **dd))
            prev = w
        self.out_chs = prev
        self.reduction = math.prod(strides)

    def forward(self, x):
        if self.channels_last and not is_exporting():  # an exported graph would guard on the batch size (B > 1)
            x = x.contiguous(memory_format=torch.channels_last)
        for m in self.children():
            x = m(x)
        return x


class SameConvStem(nn.Sequential):
    """The official TensorFlow stems of MaxViT and MOAT: one 3x3 conv per width (TF "SAME" padding, bias; the first at
    stride 2), with BatchNorm + activation between consecutive convs and nothing after the last one.

    Layers are named ``conv<k>``, ``norm<k>``, ``act<k>`` (the norm and activation after ``conv<k>``), ``k`` counted
    from ``first_index`` (MaxViT 1, MOAT 0: their checkpoint keys). In inference the input is made channels-last
    first: oneDNN's channels-last convs are 6x faster for the 3-channel first conv on one CPU thread.

    Attributes:
        out_chs: output channels.
        reduction: total stride (2).
    """

    def __init__(
            self,
            in_chs: int,
            widths: Sequence[int],
            act_layer: LayerType = nn.GELU,
            norm_eps: float = 1e-3,
            first_index: int = 0,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        prev = in_chs
        for i, w in enumerate(widths):
            k = i + first_index
            if i > 0:
                self.add_module(f'norm{k - 1}', nn.BatchNorm2d(prev, eps=norm_eps, **dd))
                self.add_module(f'act{k - 1}', act_layer())
            self.add_module(f'conv{k}', create_conv2d_same(prev, w, 3, stride=2 if i == 0 else 1, bias=True, **dd))
            prev = w
        self.out_chs = prev
        self.reduction = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            x = eager_channels_last(x)
        for layer in self:
            x = layer(x)
        return x
