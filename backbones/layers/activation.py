"""Activations that save memory in inference.

:class:`InplaceGELU` is GELU (``nn.GELU``: exact, or ``approximate='tanh'`` as in MaxViT's official model) computed
in the memory of its input when no gradient flows through it. Inside an MLP (``fc1 -> GELU -> fc2``) that saves one
buffer of the hidden width per call: on the CPU a fresh buffer that large comes from the operating system (page
faults and zeroing) on every forward, which costs CrossViT-Ti about 6-10 % of its eager inference time at batch 8.
The numbers are the same bit for bit.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from .tracing import is_tracing

__all__ = ['InplaceGELU', 'gelu_maybe_inplace']


def gelu_maybe_inplace(x: torch.Tensor, approximate: str = 'none') -> torch.Tensor:
    """``F.gelu(x, approximate)``, computed in ``x``'s memory when autograd does not record it (``x`` must be a fresh
    buffer that nothing else reads). Out of place while traced (:func:`~backbones.layers.tracing.is_tracing`): a
    graph records the functional op, which FX quantization and exporters know."""
    if is_tracing() or (torch.is_grad_enabled() and x.requires_grad):
        return F.gelu(x, approximate=approximate)
    return torch._C._nn.gelu_(x, approximate=approximate)


@register_notrace_module  # an FX leaf: the branch below reads a tensor attribute
class InplaceGELU(nn.GELU):
    """GELU (exact, or ``approximate='tanh'``), in place when its input does not require grad (inference). Use it only
    where nothing reads the input afterwards, e.g. on the output of the Linear before it in an MLP. As with
    ``nn.ReLU(inplace=True)``, a forward hook (or an FX feature node) on that Linear sees the activated values in
    inference."""

    def __init__(self, approximate: str = 'none'):
        super().__init__(approximate=approximate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_maybe_inplace(x, self.approximate)
