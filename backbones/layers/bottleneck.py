"""The ResNet bottleneck with a pluggable spatial mixer: the block SENet, SKNet, Res2Net and RedNet share.

    x -> conv1 (1x1) -> conv2 (the family's mixer) -> conv3 (1x1, no act) -> attn -> drop_path -> + shortcut -> act

What differs between those families is only ``conv2`` (grouped 3x3, selective kernel, hierarchical split,
involution), ``attn`` (squeeze-excitation or nothing), where the stride sits and the shortcut's form.

A channel gate (an ``attn`` with an ``excitation(x)`` method, e.g. :class:`~backbones.layers.SqueezeExcite`) is
fused with the residual sum: ``addcmul(shortcut, x, excitation(x))`` reads and writes the block's widest tensor once
instead of twice (stochastic depth's per-sample mask applies to the gate, the same thing).
"""
from typing import Callable, Final, Optional

import torch
import torch.nn as nn
from timm.layers import DropPath

from .conv import ConvNormAct, LayerType
from .shortcut import Shortcut
from .tracing import is_symbolic_tracing, is_tracing

__all__ = ['Bottleneck', 'MixerFn', 'resnext_width']

# mixer_fn(in_chs, out_chs, stride, first, dilation=, device=, dtype=) -> module mapping [B, in, H, W] to
# [B, out, H/s, W/s], normalized and activated, its spatial layers dilated by ``dilation``. ``first`` is True in the
# first block of a stage.
MixerFn = Callable[..., nn.Module]


@torch.jit.unused
def resnext_width(out_chs: int, base_width: int, groups: int) -> int:
    """The 3x3 width of a bottleneck with output ``out_chs`` (expansion 4): ``floor(planes * base_width / 64) *
    groups``, ResNeXt's rule (arXiv 1611.05431 Table 1; ``base_width=64, groups=1`` gives ResNet's ``planes``)."""
    return out_chs // 4 * base_width // 64 * groups


def _records_grad(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> bool:
    """Whether autograd records an op on ``a, b, c`` (also true while tracing and for FX proxies: those take the
    out-of-place op)."""
    tensors = (a, b, c)
    if is_tracing() or not all(isinstance(t, torch.Tensor) for t in tensors):
        return True
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class Bottleneck(nn.Module):
    """Residual bottleneck.

    Args:
        in_chs, out_chs: block input / output channels.
        mid_chs: width after ``conv1``.
        mixer_fn: builds ``conv2`` (see ``MixerFn``).
        mixer_chs: width after ``conv2`` (default ``mid_chs``; SENet-154 doubles it).
        stride: block stride, carried by ``conv2`` unless ``stride_in_1x1`` (Caffe ResNet v1: by ``conv1``).
        first: first block of its stage (passed to the mixer).
        dilation, first_dilation: the dilation of the block's stage and of its ``conv2`` (timm's names; they differ
            in the first block of a stage that dilates instead of striding, see
            :func:`backbones.layers.stage_strides`; ``first_dilation`` defaults to ``dilation``).
        attn_layer: channel attention applied after ``conv3`` (e.g. squeeze-excitation), or None.
        shortcut_kernel_size, avg_down: form of the projection shortcut (built when the shape changes).
        drop_path: stochastic-depth rate of the residual branch.
    """

    gated: Final[bool]  # attn is a channel gate, fused with the residual sum

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            mid_chs: int,
            mixer_fn: MixerFn,
            mixer_chs: Optional[int] = None,
            stride: int = 1,
            first: bool = False,
            stride_in_1x1: bool = False,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            attn_layer: Optional[LayerType] = None,
            shortcut_kernel_size: int = 1,
            avg_down: bool = False,
            drop_path: float = 0.,
            act_layer: LayerType = nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        mixer_chs = mixer_chs or mid_chs
        first_dilation = first_dilation or dilation
        self.conv1 = ConvNormAct(in_chs, mid_chs, 1, stride=stride if stride_in_1x1 else 1, act_layer=act_layer, **dd)
        self.conv2 = mixer_fn(mid_chs, mixer_chs, 1 if stride_in_1x1 else stride, first, dilation=first_dilation, **dd)
        self.conv3 = ConvNormAct(mixer_chs, out_chs, 1, act_layer=None, **dd)
        self.attn = attn_layer(out_chs, **dd) if attn_layer is not None else nn.Identity()
        self.gated = hasattr(self.attn, 'excitation')
        if stride != 1 or in_chs != out_chs:
            self.downsample = Shortcut(
                in_chs, out_chs, stride, kernel_size=shortcut_kernel_size, avg_down=avg_down, dilation=dilation,
                first_dilation=first_dilation, **dd)
        else:
            self.downsample = nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = act_layer(inplace=True)

    def zero_init_last(self):
        """Start the residual branch at zero (the last BN's scale), as RedNet and many ResNet recipes do."""
        nn.init.zeros_(self.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.conv3(x)
        if is_symbolic_tracing():
            return self._residual_traced(x, shortcut)
        if self.gated:
            gate = self.drop_path(self.attn.excitation(x))
            if torch.jit.is_scripting() or _records_grad(x, gate, shortcut):
                return self.act(torch.addcmul(shortcut, x, gate))
            return self.act(torch.addcmul(shortcut, x, gate, out=x))  # into conv3's fresh output: no new buffer
        # in place on the branch output (a fresh buffer that autograd does not need), as timm's ResNets do
        return self.act(self.drop_path(self.attn(x)).add_(shortcut))

    @torch.jit.unused
    def _residual_traced(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """The residual sum as an FX graph records it: out of place (a graph node may be read as a feature) and as
        a separate product and sum, which FX quantization has int8 ops for (the sum fused with the ReLU after it);
        ``addcmul`` would run in float between a dequantize and a quantize node."""
        if self.gated:
            return self.act(shortcut + x * self.drop_path(self.attn.excitation(x)))
        return self.act(shortcut + self.drop_path(self.attn(x)))
