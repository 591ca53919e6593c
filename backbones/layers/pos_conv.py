"""Conditional position encoding (CPVT's PEG and its kin in DaViT, Twins, BiFormer and RapidNet): ``x + dwconv(x)``,
a depth-wise conv with a residual, and the one place its identity is folded into the kernel."""
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv import same_padding
from .tracing import contiguous_for_export, is_tracing

__all__ = ['PosConv', 'RepCPE', 'identity_folded', 'residual_dwconv']


def identity_folded(weight: torch.Tensor, sign: float = 1.) -> torch.Tensor:
    """A depth-wise kernel ``[C, 1, k_h, k_w]`` (odd sides) with ``sign`` added to the centre tap of every channel
    (+1 folds the identity in, -1 takes it out). Built by padding, not item assignment, so FX can trace it and
    autograd sees a plain sum."""
    k_h, k_w = weight.shape[-2:]
    eye = weight.new_full((weight.shape[0], 1, 1, 1), sign)
    return weight + F.pad(eye, (k_w // 2, k_w // 2, k_h // 2, k_h // 2))


def residual_dwconv(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        padding: List[int],
        dilation: List[int],
) -> torch.Tensor:
    """``x + dwconv(x)`` (``weight``: a depth-wise, size-keeping kernel ``[C, 1, k, k]``, stride 1) as one
    convolution, the identity added to the centre tap of every kernel: one pass over the map instead of a conv and
    an add (the same numbers up to float rounding; 1.7 % of DaViT-T's CPU inference).

    For eager runs: under tracing, exporters want a kernel of static shape, so callers run their conv and the add
    there (``x + conv(x)``, as :class:`PosConv` does). It takes the conv's tensors and sizes, not the module, which
    TorchScript cannot pass to a function."""
    return F.conv2d(x, identity_folded(weight), bias, 1, padding, dilation, weight.shape[0])


class PosConv(nn.Module):
    """``x + proj(x)``, ``proj`` a depth-wise ``kernel_size`` conv with bias ("same" padding; dilated in a stage that
    dilates instead of striding), through :func:`residual_dwconv`.

    Args:
        dim: channels.
        kernel_size: odd kernel side (3 in DaViT's CPE and Twins' PEG).
        dilation: of the conv.
        channels_last: the map is ``[B, H, W, C]`` (Twins' blocks), permuted to an NCHW view and back.
        fold: run eagerly as one conv with the identity in its kernel (:func:`residual_dwconv`); False: the conv and
            the add everywhere, so that eager runs and traced graphs agree bit for bit (Twins, whose FX feature
            extraction is held to its eager features at 1e-6).
    """

    def __init__(self, dim: int, kernel_size: int = 3, dilation: int = 1, channels_last: bool = False,
                 fold: bool = True, device=None, dtype=None):
        super().__init__()
        assert kernel_size % 2 == 1, 'the identity sits at the centre tap: odd kernels only'
        self.channels_last = channels_last
        self.fold = fold
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=same_padding(kernel_size, dilation), dilation=dilation,
                              groups=dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return self._residual(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self._residual(x)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fold or is_tracing():  # exporters want a kernel of static shape: the conv and the add
            return x + self.proj(contiguous_for_export(x))
        return residual_dwconv(x, self.proj.weight, self.proj.bias, self.proj.padding, self.proj.dilation)


class RepCPE(nn.Module):
    """Conditional position encoding ``x + pe(x)`` (``pe``: depth-wise conv with bias; RapidNet's, FastViT's
    ``RepConditionalPosEnc``) that :meth:`reparameterize` turns into one conv ``reparam_conv`` for deployment (the
    identity added at each kernel's centre tap, for every forward, traced ones included).

    Args:
        dim: width.
        kernel_size: of the depth-wise conv (7; odd).
        dilation: of the depth-wise conv.
    """

    def __init__(self, dim: int, kernel_size: int = 7, dilation: int = 1, device=None, dtype=None):
        super().__init__()
        self.pe = nn.Conv2d(dim, dim, kernel_size, padding=same_padding(kernel_size, dilation), dilation=dilation,
                            groups=dim, device=device, dtype=dtype)
        self.reparam_conv: Optional[nn.Conv2d] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        if is_tracing():
            return x + self.pe(contiguous_for_export(x))
        return residual_dwconv(x, self.pe.weight, self.pe.bias, self.pe.padding, self.pe.dilation)

    @torch.no_grad()
    def reparameterize(self):
        if self.reparam_conv is not None:
            return
        pe = self.pe
        conv = nn.Conv2d(
            pe.in_channels, pe.out_channels, pe.kernel_size, padding=pe.padding, dilation=pe.dilation,
            groups=pe.groups, device=pe.weight.device, dtype=pe.weight.dtype)
        conv.weight.copy_(identity_folded(pe.weight, +1))
        conv.bias.copy_(pe.bias)
        self.reparam_conv = conv
        del self.pe
