"""Folding for inference: a BatchNorm's running statistics, or a per-channel scale, into the conv before it.

Both are exact algebra (``bn(conv(x)) == conv'(x)`` with the eval statistics); the new weights are computed in
float64 and cast back, so the folded layer differs from the pair only by the rounding of its own arithmetic. Modules
call these from their ``fuse()`` / ``reparameterize()`` (timm's ``reparameterize_model`` protocol, which
:func:`backbones.optimize_for_inference` runs); :class:`~backbones.layers.ConvNormAct` folds its own BatchNorm.
"""
from typing import Optional, Union

import torch
import torch.nn as nn

__all__ = ['fuse_conv_bn', 'fuse_conv_bn_', 'fuse_bn_conv_', 'scale_conv_', 'bn_scale_shift']


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv (with bias) equal to ``bn(conv(x))`` with ``bn``'s running statistics, i.e. in eval mode.

    ``conv`` may have any kernel, stride, dilation, groups and padding, with or without a bias. The result keeps
    ``conv``'s device, dtype and training flag.
    """
    if bn.num_features != conv.out_channels:
        raise ValueError(f'BatchNorm width {bn.num_features} != conv output channels {conv.out_channels}')
    scale, shift = bn_scale_shift(bn, torch.float64)
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(w * scale.view(-1, 1, 1, 1))
    fused.bias.copy_(b * scale + shift)
    fused.train(conv.training)
    return fused


def bn_scale_shift(bn: nn.BatchNorm2d, dtype: Optional[torch.dtype] = None):
    """``bn(x) == x * scale + shift`` per channel with the running statistics (the eval-mode function).

    In ``dtype`` (float64 for folding once, exactly) or, by default, the statistics' own dtype and differentiable
    (for folding into a neighbouring conv at run time)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError('cannot fold a BatchNorm without running statistics (track_running_stats=False)')

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t if dtype is None else t.to(dtype)

    scale = torch.rsqrt(cast(bn.running_var) + bn.eps)
    if bn.weight is not None:
        scale = scale * cast(bn.weight)
    shift = -cast(bn.running_mean) * scale
    if bn.bias is not None:
        shift = shift + cast(bn.bias)
    return scale, shift


def _set_weight_bias_(conv: nn.Conv2d, w: torch.Tensor, b: torch.Tensor) -> nn.Conv2d:
    conv.weight.copy_(w)
    if conv.bias is None:  # nn.Conv2d keeps a None slot for it: the new bias is an ordinary parameter
        conv.bias = nn.Parameter(b.to(conv.weight), requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(b)
    return conv


@torch.no_grad()
def fuse_conv_bn_(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Like :func:`fuse_conv_bn` (``bn(conv(x))`` in eval mode), but in place: ``conv`` keeps its class (timm's
    ``Conv2dSame`` and its dynamic padding included) and gains a bias if it had none."""
    if bn.num_features != conv.out_channels:
        raise ValueError(f'BatchNorm width {bn.num_features} != conv output channels {conv.out_channels}')
    scale, shift = bn_scale_shift(bn, torch.float64)
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    return _set_weight_bias_(conv, conv.weight.double() * scale.view(-1, 1, 1, 1), b * scale + shift)


@torch.no_grad()
def fuse_bn_conv_(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """Fold a BatchNorm that comes BEFORE a 1x1 conv into it, in place: ``conv(bn(x))`` in eval mode.

    Exact only for a plain ungrouped 1x1 conv without padding (a zero-padded border would see the BatchNorm's shift):
    ``W (s x + t) = (W s) x + W t``. Raises ``ValueError`` for any other conv.
    """
    if conv.kernel_size != (1, 1) or conv.padding not in ((0, 0), 'valid') or type(conv) is not nn.Conv2d:
        raise ValueError(f'a BatchNorm folds into a following conv only if it is 1x1 without padding, got '
                         f'kernel {conv.kernel_size}, padding {conv.padding}')
    if conv.groups != 1 or bn.num_features != conv.in_channels:
        raise ValueError(f'BatchNorm width {bn.num_features} vs conv input channels {conv.in_channels} '
                         f'(groups {conv.groups}): cannot fold')
    scale, shift = bn_scale_shift(bn, torch.float64)
    w = conv.weight.double()  # [out, in, 1, 1]
    b = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64,
                                                                     device=w.device)
    return _set_weight_bias_(conv, w * scale.view(1, -1, 1, 1), b + w[:, :, 0, 0] @ shift)


@torch.no_grad()
def scale_conv_(conv: nn.Conv2d, scale: Union[torch.Tensor, nn.Parameter]) -> nn.Conv2d:
    """Fold a per-output-channel ``scale`` (e.g. a layer scale applied right after the conv) into ``conv`` in place.

    ``scale * conv(x) == conv'(x)``; a conv without bias keeps none (its zero bias stays zero).
    """
    s = scale.detach().reshape(-1).double()
    if s.numel() != conv.out_channels:
        raise ValueError(f'scale has {s.numel()} entries, the conv {conv.out_channels} output channels')
    conv.weight.copy_(conv.weight.double() * s.view(-1, 1, 1, 1))
    if conv.bias is not None:
        conv.bias.copy_(conv.bias.double() * s)
    return conv
