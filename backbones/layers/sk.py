"""Selective Kernel unit (Li et al., "Selective Kernel Networks", arXiv 1903.06586).

    X -> paths[i] (3x3 grouped conv, dilation i+1, with the stride) -> BN -> ReLU      = V_i   (split)
    U = sum_i V_i;  s = mean_hw(U);  z = ReLU(BN(fc_reduce(s)))                               (fuse)
    a = softmax over i of fc_select(z) viewed as [M, C];  out = sum_i a_i * V_i                (select)

Keys: ``paths.{i}.conv.weight``, ``paths.{i}.bn.*`` (one :class:`ConvNormAct` per path),
``attn.fc_reduce.weight``, ``attn.bn.*``, ``attn.fc_select.weight`` — the same names timm's ``SelectiveKernel`` uses,
so timm checkpoints map onto it without renaming inside the unit.
"""
from typing import Optional

import torch
import torch.nn as nn

from .conv import ConvNormAct, LayerType
from .fuse import fuse_conv_bn

__all__ = ['SelectiveKernel', 'SelectiveKernelAttn', 'sk_attn_chs']


class SelectiveKernelAttn(nn.Module):
    """Fuse + select: per-channel softmax weights over ``num_paths`` branches from their sum.

    Args:
        chs: channels C of each path.
        attn_chs: fuse width d (the paper's ``max(C / r, L)``; passed explicitly because the official SKNet-101
            breaks that rule in one stage).
        num_paths: number of branches M.

    ``forward(s)`` maps the pooled sum of the paths ``s = mean_hw(U)``, ``[B, C, 1, 1]``, to attention weights
    ``[B, M, C, 1, 1]`` (summing to 1 over M).
    As in the paper (and timm), ``bn`` normalizes the pooled vector, so training mode needs a batch of 2 or more.
    """

    def __init__(
            self,
            chs: int,
            attn_chs: int,
            num_paths: int = 2,
            norm_layer: LayerType = nn.BatchNorm2d,
            act_layer: LayerType = nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_paths = num_paths
        self.fc_reduce = nn.Conv2d(chs, attn_chs, 1, bias=False, **dd)
        self.bn = norm_layer(attn_chs, **dd)
        self.act = act_layer(inplace=True)
        self.fc_select = nn.Conv2d(attn_chs, chs * num_paths, 1, bias=False, **dd)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        z = self.act(self.bn(self.fc_reduce(s)))  # [B, d, 1, 1]
        logits = self.fc_select(z)  # [B, M*C, 1, 1]; path i owns channels i*C .. (i+1)*C
        return logits.reshape(s.shape[0], self.num_paths, s.shape[1], 1, 1).softmax(dim=1)

    def fuse(self) -> 'SelectiveKernelAttn':
        """Fold a ``BatchNorm2d`` into ``fc_reduce`` (which gains a bias), in place; returns ``self``."""
        if type(self.bn) is nn.BatchNorm2d and self.bn.track_running_stats:
            self.fc_reduce = fuse_conv_bn(self.fc_reduce, self.bn)
            self.bn = nn.Identity()
        return self


class SelectiveKernel(nn.Module):
    """The SK unit, usable as a :class:`Bottleneck` mixer (it replaces the grouped 3x3 of ResNeXt).

    Args:
        in_chs, out_chs: channels in / out (each path maps ``in_chs`` to ``out_chs``).
        attn_chs: fuse width d of the attention (explicit; see :class:`SelectiveKernelAttn`).
        stride: carried by every path.
        groups: groups G of every path's conv.
        num_paths: M; path ``i`` is a 3x3 conv with dilation ``(i + 1) * dilation`` (receptive field 3, 5, 7, ...).
        kernel_size: kernel of every path (3).
        dilation: base dilation of the paths (1; more in a stage that dilates instead of striding, as timm's
            ``SelectiveKernel(dilation=)``).
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            attn_chs: int,
            stride: int = 1,
            groups: int = 32,
            num_paths: int = 2,
            kernel_size: int = 3,
            dilation: int = 1,
            norm_layer: LayerType = nn.BatchNorm2d,
            act_layer: LayerType = nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.paths = nn.ModuleList([
            ConvNormAct(
                in_chs, out_chs, kernel_size, stride=stride, dilation=(i + 1) * dilation, groups=groups,
                norm_layer=norm_layer, act_layer=act_layer, **dd)
            for i in range(num_paths)
        ])
        self.attn = SelectiveKernelAttn(
            out_chs, attn_chs, num_paths, norm_layer=norm_layer, act_layer=act_layer, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the paths are kept as a list (no [B, M, C, H, W] stack), U is never formed (the mean of a sum is the sum of
        # the means) and the weighted sum accumulates with addcmul: each path is read twice, nothing else is written
        v = [path(x) for path in self.paths]  # M x [B, C, H, W]
        s = v[0].mean((2, 3), keepdim=True)
        for vi in v[1:]:
            s = s + vi.mean((2, 3), keepdim=True)
        a = self.attn(s).unbind(1)  # M x [B, C, 1, 1]
        out = v[0] * a[0]
        for i in range(1, len(v)):
            out = torch.addcmul(out, v[i], a[i])
        return out


def sk_attn_chs(chs: int, reduction: int = 16, min_chs: Optional[int] = 32) -> int:
    """The paper's fuse width ``d = max(C / r, L)`` (``min_chs`` = L; ``None`` drops the floor)."""
    return max(chs // reduction, min_chs or 0)
