"""Squeeze-and-Excitation (Hu et al., arXiv 1709.01507)."""
from typing import Optional

import torch.nn as nn

from .conv import LayerType

__all__ = ['SqueezeExcite']


class SqueezeExcite(nn.Module):
    """Channel gate: ``x * sigmoid(fc2(act(fc1(mean_hw(x)))))`` with 1x1 convs (biased) as the two FC layers.

    Args:
        chs: channels of ``x``.
        rd_chs: reduced width; default ``chs // rd_divisor``.
        rd_divisor: the paper's reduction ratio r (16).
    """

    def __init__(
            self,
            chs: int,
            rd_chs: Optional[int] = None,
            rd_divisor: int = 16,
            act_layer: LayerType = nn.ReLU,
            gate_layer: LayerType = nn.Sigmoid,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        rd_chs = rd_chs or chs // rd_divisor
        self.fc1 = nn.Conv2d(chs, rd_chs, 1, bias=True, **dd)
        self.act = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(rd_chs, chs, 1, bias=True, **dd)
        self.gate = gate_layer()

    def excitation(self, x):
        """The channel weights ``[B, C, 1, 1]`` (``forward(x) = x * excitation(x)``; a residual block can fuse the
        product with its sum, see :class:`~backbones.layers.Bottleneck`)."""
        s = x.mean((2, 3), keepdim=True)
        return self.gate(self.fc2(self.act(self.fc1(s))))

    def forward(self, x):
        return x * self.excitation(x)
