"""Conv -> norm -> activation, the unit every CNN family here is made of; TensorFlow "SAME" padding."""
from typing import Callable, List, Optional, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from .fuse import fuse_conv_bn
from .tracing import is_exporting, is_symbolic_tracing, is_tracing

__all__ = [
    'ConvNormAct', 'PointwiseConv2d', 'pointwise_matmul', 'same_padding', 'same_pads', 'pad_same', 'fill_border_',
    'Conv2dSame', 'create_conv2d_same', 'PaddedConv2d', 'strided_conv2d']

LayerType = Union[Type[nn.Module], Callable[..., nn.Module]]


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Symmetric padding keeping the size at stride 1 (odd kernels)."""
    return ((kernel_size - 1) // 2) * dilation


def same_pads(x: torch.Tensor, kernel_size: int, stride: int, dilation: int = 1) -> List[int]:
    """TensorFlow "SAME" padding of an NCHW map in ``F.pad`` order: ``[left, right, top, bottom]`` (a dilated
    window spans ``(kernel_size - 1) * dilation + 1`` pixels)."""
    span = (kernel_size - 1) * dilation + 1
    pads: List[int] = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: the last dimension first
        total = ((n + stride - 1) // stride - 1) * stride + span - n
        if span < stride:  # (a window narrower than its stride can skip pixels: never negative padding)
            total = max(total, 0)
        pads += [total // 2, total - total // 2]
    return pads


def pad_same(x: torch.Tensor, kernel_size: int, stride: int, value: float = 0., dilation: int = 1) -> torch.Tensor:
    """Pad an NCHW map as TensorFlow's "SAME" padding does for a ``kernel_size`` / ``stride`` / ``dilation`` window:
    ``ceil(n / stride)`` outputs per side, the total padding split with the smaller half first (top / left).

    The same numbers as ``timm.layers.pad_same``, in integer arithmetic: ``math.ceil`` of a float turns every later
    size of a ``torch.export`` trace into nested ceilings, which made exporting MaxViT / MOAT several times slower.
    """
    pads = same_pads(x, kernel_size, stride, dilation)
    if torch.jit.is_scripting() or not isinstance(x, torch.Tensor) or is_tracing() or x.dim() != 4 \
            or min(pads) < 0 or x.requires_grad:  # (not a tensor: an FX proxy)
        return F.pad(x, pads, value=value)
    return _pad_borders(x, pads, value)


@torch.jit.unused
def _pad_borders(x: torch.Tensor, pads: List[int], value: float) -> torch.Tensor:
    """``F.pad(x, pads, value=value)`` for an NCHW map (eager, no autograd): ``F.pad`` fills the whole new buffer
    before copying ``x`` into it; here only the border is filled (about a third less memory traffic for MBConv's
    strided depth-wise input). The layout (channels-last or not) is kept."""
    left, right, top, bottom = pads
    if not any(pads):
        return x
    B, C, H, W = x.shape
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    out = torch.empty((B, C, H + top + bottom, W + left + right), dtype=x.dtype, device=x.device, memory_format=fmt)
    out[:, :, top:top + H, left:left + W] = x
    return fill_border_(out, pads, value)


@torch.jit.unused
def fill_border_(x: torch.Tensor, pads: List[int], value: float = 0.) -> torch.Tensor:
    """Set the border ``pads = [left, right, top, bottom]`` of an NCHW map to ``value``, in place."""
    left, right, top, bottom = pads
    H, W = x.shape[-2] - top - bottom, x.shape[-1] - left - right
    for rows, cols in ((slice(0, top), slice(None)), (slice(top + H, None), slice(None)),
                       (slice(top, top + H), slice(0, left)), (slice(top, top + H), slice(left + W, None))):
        x[:, :, rows, cols] = value
    return x


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` (square kernel) with TensorFlow "SAME" padding computed from each input's size (asymmetric,
    bottom / right heavy, where the total is odd: strided convolutions on even maps, even kernels at stride 1)."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int,
            stride: int = 1,
            groups: int = 1,
            bias: bool = False,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__(
            in_chs, out_chs, kernel_size, stride=stride, padding=0, dilation=dilation, groups=groups, bias=bias,
            device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size[0], self.stride[0], dilation=self.dilation[0])
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def create_conv2d_same(
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        dilation: int = 1,
        device=None,
        dtype=None,
) -> nn.Conv2d:
    """A convolution with TensorFlow "SAME" padding: a plain ``nn.Conv2d`` with symmetric padding where that is the
    same (odd kernel, stride 1), else :class:`Conv2dSame`. Parameters ``weight`` / ``bias`` either way."""
    if stride == 1 and kernel_size % 2 == 1:
        return nn.Conv2d(in_chs, out_chs, kernel_size, padding=same_padding(kernel_size, dilation), dilation=dilation,
                         groups=groups, bias=bias, device=device, dtype=dtype)
    return Conv2dSame(
        in_chs, out_chs, kernel_size, stride, groups=groups, bias=bias, dilation=dilation, device=device, dtype=dtype)


class PaddedConv2d(nn.Conv2d):
    """``nn.Conv2d`` after a fixed zero padding ``pads = [left, right, top, bottom]`` (``F.pad`` order), for the
    asymmetric windows ``nn.Conv2d``'s symmetric padding cannot give (see :func:`strided_conv2d`)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, pads: List[int], dilation: int = 1,
                 groups: int = 1, bias: bool = True, device=None, dtype=None):
        super().__init__(in_chs, out_chs, kernel_size, dilation=dilation, groups=groups, bias=bias, device=device,
                         dtype=dtype)
        self.pads = list(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(F.pad(x, self.pads), self.weight, self.bias)


def strided_conv2d(
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        device=None,
        dtype=None,
) -> nn.Conv2d:
    """A downsampling convolution (``kernel_size``, ``stride``, symmetric ``padding``), or, in a stage that keeps its
    resolution (``stride`` 1 given by :func:`backbones.layers.stage_strides`), the same window at every pixel: each
    output reads the pixels the undilated convolution reads for the output at its position, spaced ``dilation``
    apart (``padding * dilation`` before, ``(kernel_size - 1 - padding) * dilation`` after: a 2x2 patch merge reads
    its pixel and the next ones). Parameters ``weight`` / ``bias`` either way."""
    dd = dict(device=device, dtype=dtype)
    before, after = padding * dilation, (kernel_size - 1 - padding) * dilation
    if before == after or stride > 1:
        return nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding * dilation, dilation=dilation,
                         groups=groups, bias=bias, **dd)
    return PaddedConv2d(in_chs, out_chs, kernel_size, [before, after, before, after], dilation, groups, bias, **dd)


def pointwise_matmul(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A 1x1 convolution (``weight [out, in]``) of an NCHW map as one matmul over the channels:
    ``linear(x.permute(0, 2, 3, 1), weight).permute(0, 3, 1, 2)``. On a channels-last map the matmul reads the memory
    as it is and the result is channels-last again."""
    return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


@register_notrace_module  # an FX leaf: the path is chosen from the input's memory layout
class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution (stride 1, no padding; ``nn.Conv2d`` parameters and keys) that, run eagerly on a
    channels-last map, is one matmul over the channels: ``linear(x.permute(0, 2, 3, 1), W)``, channels-last out.

    PyTorch sends 1x1 convolutions of small batches on one CPU thread outside oneDNN, to a path that first copies a
    channels-last input to NCHW (see :meth:`ConvNormAct.use_matmul_1x1`). NCHW-contiguous inputs, tracing and
    scripting take the convolution.
    """

    def __init__(self, in_chs: int, out_chs: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_chs, out_chs, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or is_tracing() or x.dim() != 4 or x.is_contiguous() \
                or not x.is_contiguous(memory_format=torch.channels_last):
            return self._conv_forward(x, self.weight, self.bias)
        return pointwise_matmul(x, self.weight.flatten(1), self.bias)


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
        self.matmul_1x1 = False  # see use_matmul_1x1

    def use_matmul_1x1(self, enable: bool = True) -> bool:
        """Run a pointwise conv (1x1, stride 1, no padding, no groups) as one matmul over the channel dim of a
        channels-last input: ``linear(x.permute(0, 2, 3, 1), W)``, whose result is channels-last again.

        Same function and weights. Measured (torch.profiler, interleaved runs; CPU, 1 thread, batch 8): PyTorch sends
        1x1 convs of small batches on one thread to its non-oneDNN path, which first copies a channels-last input
        to NCHW and back (``aten::copy_``); the matmul reads it in place, 4-5 % of a whole SE-ResNet-50 / Res2Net-50
        forward. For networks that run channels-last (see :class:`~backbones.layers.ConvStem`). Returns whether it
        is on (only pointwise convs can).
        """
        c = self.conv
        self.matmul_1x1 = enable and c.kernel_size == (1, 1) and c.stride == (1, 1) and c.padding in ((0, 0), 'valid') \
            and c.dilation == (1, 1) and c.groups == 1 and c.padding_mode == 'zeros'
        return self.matmul_1x1

    def forward(self, x):
        # exported: the conv (channels-last maps guard on B > 1); an FX graph records the conv module, which FX
        # quantization fuses with the BatchNorm and activation into one int8 convolution
        if self.matmul_1x1 and not is_exporting() and not is_symbolic_tracing():
            x = pointwise_matmul(x, self.conv.weight.flatten(1), self.conv.bias)
        else:
            x = self.conv(x)
        return self.act(self.bn(x))

    def fuse(self) -> 'ConvNormAct':
        """Fold a ``BatchNorm2d`` (its running statistics: the eval-mode function) into the conv, in place; returns
        ``self``. Other norms, or none, are left as they are. timm's ``reparameterize_model`` and
        :func:`backbones.optimize_for_inference` call it; the model is then meant for inference only."""
        if type(self.bn) is nn.BatchNorm2d and self.bn.track_running_stats:
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()
        return self
